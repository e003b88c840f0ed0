package remoteusers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/kvstore"
)

// DefaultResync is how often the users are reconciled without a file event.
const DefaultResync = 30 * time.Second

// debounce groups the several events of one ConfigMap update.
const debounce = 100 * time.Millisecond

// Users manages the remote users of an etcd: kvstore/etcdserver.Server for
// the embedded etcd, External for an external one.
type Users interface {
	EnsureRemoteUser(ctx context.Context, cluster string) (kvstore.Config, error)
	RemoveRemoteUser(ctx context.Context, cluster string) error
	RemoteUsers(ctx context.Context) ([]string, error)
	// The shared user "remote" of Cilium's legacy auth mode.
	EnsureLegacyRemoteUser(ctx context.Context) (kvstore.Config, error)
	RemoveLegacyRemoteUser(ctx context.Context) error
	HasLegacyRemoteUser(ctx context.Context) (bool, error)
}

// Config configures a Reconciler.
type Config struct {
	// Cluster is this cluster's name (it never gets a remote user).
	Cluster string
	// File is the users file; empty: only Static.
	File string
	// Static clusters always have a user, whatever the file says (the
	// deprecated --remote-clusters flag).
	Static []string
	// Resync is how often the file is read again without an event
	// (default DefaultResync).
	Resync time.Duration
	// OnEnsure, if set, is called with the client config of every user
	// created (and of every user the first pass finds), per cluster: a
	// legacy cluster gets the shared user's config; OnRemove after a
	// cluster lost its user (or left the legacy list).
	OnEnsure func(cluster string, c kvstore.Config) error
	OnRemove func(cluster string) error
}

// Reconciler keeps the remote users equal to Static plus the file's clusters.
type Reconciler struct {
	cfg   Config
	users Users
	clock clock.WithTicker
	log   *slog.Logger

	mu      sync.Mutex
	lastErr error
	current []string // users after the last pass
	legacy  []string // legacy clusters handed to OnEnsure and not removed since
	ensured bool     // the first full pass succeeded

	usersGauge prometheus.Gauge
	errors     *prometheus.CounterVec
}

// New returns a reconciler of users; its metrics are registered on reg
// (nil: not registered).
func New(cfg Config, users Users, clk clock.WithTicker, log *slog.Logger, reg prometheus.Registerer) (*Reconciler, error) {
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	r := &Reconciler{
		cfg: cfg, users: users, clock: clk, log: log,
		usersGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "clustermesh_apiserver", Name: "remote_users",
			Help: "Read-only etcd users of remote clusters.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clustermesh_apiserver", Name: "remote_users_errors_total",
			Help: "Failed reconciliations of the remote users, by reason (file: the users file is unreadable or malformed; etcd: a user could not be changed).",
		}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{r.usersGauge, r.errors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register remote users metrics: %w", err)
			}
		}
	}
	return r, nil
}

// LastError returns the error of the last pass, nil when it succeeded.
func (r *Reconciler) LastError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Current returns the clusters that had a user after the last pass.
func (r *Reconciler) Current() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.current)
}

// Run reconciles at once, on every change in the file's directory and every
// Resync, until ctx is done. Failed passes are reported and retried on the
// next event or tick; Run returns nil when ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if r.cfg.File != "" {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("watch remote users file: %w", err)
		}
		defer w.Close()
		if err := w.Add(filepath.Dir(r.cfg.File)); err != nil {
			// The periodic rescan still applies the file once it exists.
			r.log.Warn("cannot watch the remote users file's directory; rescanning only", "file", r.cfg.File, "error", err)
		}
		events, watchErrs = w.Events, w.Errors
	}
	tick := r.clock.NewTicker(r.cfg.Resync)
	defer tick.Stop()
	var pending <-chan time.Time // debounce timer of file events
	r.pass(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			r.log.Debug("remote users directory changed", "event", ev.String())
			if pending == nil {
				pending = r.clock.After(debounce)
			}
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			r.log.Warn("watch of the remote users file failed; rescanning only", "error", err)
		case <-pending:
			pending = nil
			r.pass(ctx)
		case <-tick.C():
			r.pass(ctx)
		}
	}
}

func (r *Reconciler) pass(ctx context.Context) {
	if err := r.Reconcile(ctx); err != nil && ctx.Err() == nil {
		r.log.Error("cannot reconcile the remote users", "file", r.cfg.File, "error", err)
	}
}

// Reconcile makes the users equal to Static plus the file's clusters. When
// the file cannot be read or parsed it returns an error wrapping
// ErrMalformed (or the read error) and changes nothing.
func (r *Reconciler) Reconcile(ctx context.Context) error {
	err := r.reconcile(ctx)
	r.mu.Lock()
	r.lastErr = err
	r.mu.Unlock()
	return err
}

func (r *Reconciler) reconcile(ctx context.Context) error {
	want := slices.Clone(r.cfg.Static)
	var legacy []string
	if r.cfg.File != "" {
		data, err := os.ReadFile(r.cfg.File)
		if err == nil {
			var fromFile Wanted
			fromFile, err = Parse(data, r.cfg.Cluster)
			want, legacy = append(want, fromFile.Clusters...), fromFile.Legacy
		}
		if err != nil {
			r.errors.WithLabelValues("file").Inc()
			return fmt.Errorf("remote users file %s: %w", r.cfg.File, err)
		}
	}
	slices.Sort(want)
	want = slices.Compact(want)

	have, err := r.users.RemoteUsers(ctx)
	if err != nil {
		r.errors.WithLabelValues("etcd").Inc()
		return err
	}
	r.mu.Lock()
	first := !r.ensured
	r.mu.Unlock()
	var errs []error
	for _, c := range want {
		// The first pass ensures every user: it repairs their roles and
		// writes their client configs.
		if !first && slices.Contains(have, c) {
			continue
		}
		rc, err := r.users.EnsureRemoteUser(ctx, c)
		if err == nil && r.cfg.OnEnsure != nil {
			err = r.cfg.OnEnsure(c, rc)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("add remote user for %s: %w", c, err))
			continue
		}
		if !slices.Contains(have, c) {
			r.log.Info("added remote user", "cluster", c)
		}
	}
	for _, c := range have {
		if slices.Contains(want, c) {
			continue
		}
		err := r.users.RemoveRemoteUser(ctx, c)
		if err == nil && r.cfg.OnRemove != nil {
			err = r.cfg.OnRemove(c)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove remote user of %s: %w", c, err))
			continue
		}
		r.log.Info("removed remote user", "cluster", c)
	}
	errs = append(errs, r.reconcileLegacy(ctx, legacy, want, first)...)
	now, lerr := r.users.RemoteUsers(ctx)
	if lerr == nil {
		r.mu.Lock()
		r.current = now
		r.mu.Unlock()
		r.usersGauge.Set(float64(len(now)))
	}
	if err := errors.Join(errs...); err != nil {
		r.errors.WithLabelValues("etcd").Inc()
		return err
	}
	r.mu.Lock()
	r.ensured = true
	r.mu.Unlock()
	return nil
}

// reconcileLegacy keeps the shared user "remote" while some cluster reads
// in Cilium's legacy mode, and tells OnEnsure and OnRemove about each
// legacy cluster.
func (r *Reconciler) reconcileLegacy(ctx context.Context, want, perCluster []string, first bool) []error {
	have, err := r.users.HasLegacyRemoteUser(ctx)
	if err != nil {
		return []error{err}
	}
	r.mu.Lock()
	done := slices.Clone(r.legacy)
	r.mu.Unlock()
	var errs []error
	keep := done[:0]
	for _, c := range done {
		if slices.Contains(want, c) {
			keep = append(keep, c)
			continue
		}
		// A cluster that moved to its own user keeps the config written
		// for that user.
		if r.cfg.OnRemove != nil && !slices.Contains(perCluster, c) {
			if err := r.cfg.OnRemove(c); err != nil {
				errs = append(errs, fmt.Errorf("remove legacy remote config of %s: %w", c, err))
				keep = append(keep, c)
				continue
			}
		}
		r.log.Info("cluster no longer reads as the legacy user", "cluster", c)
	}
	done = keep
	if len(want) == 0 {
		if have {
			if err := r.users.RemoveLegacyRemoteUser(ctx); err != nil {
				errs = append(errs, fmt.Errorf("remove the legacy remote user: %w", err))
			} else {
				r.log.Info("removed the legacy remote user")
			}
		}
	} else if first || !have || len(done) < len(want) {
		rc, err := r.users.EnsureLegacyRemoteUser(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("add the legacy remote user: %w", err))
		}
		for _, c := range want {
			if err != nil || (slices.Contains(done, c) && !first) {
				continue
			}
			if r.cfg.OnEnsure != nil {
				if oerr := r.cfg.OnEnsure(c, rc); oerr != nil {
					errs = append(errs, fmt.Errorf("add legacy remote config of %s: %w", c, oerr))
					continue
				}
			}
			if !slices.Contains(done, c) {
				done = append(done, c)
				r.log.Info("cluster reads as the legacy user", "cluster", c)
			}
		}
	}
	r.mu.Lock()
	r.legacy = done
	r.mu.Unlock()
	return errs
}
