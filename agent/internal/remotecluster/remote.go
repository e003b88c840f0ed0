package remotecluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Causes that end a session.
var (
	errStale         = errors.New("unreachable for longer than the stale TTL: state withdrawn")
	errConfigChanged = errors.New("remote cluster config changed")
)

// remote is one configured remote cluster. Its kind stores survive sessions
// (so a new session's listing withdraws what vanished meanwhile) and run
// only within a session; the manager drains them when no session runs.
type remote struct {
	m    *Manager
	name string
	log  *slog.Logger
	data []byte // config file content; Run goroutine only

	cancel context.CancelFunc // of the running goroutine; Run goroutine only
	done   chan struct{}      // closed when the running goroutine exits

	id uint32 // reserved cluster ID; guarded by m.mu

	// rem is the remote as the current session validates its entries
	// against, and dpID the cluster ID the stores' entries are programmed
	// under; written by the session goroutine before it runs the stores.
	rem  wire.Remote
	dpID uint32

	storeCfg [numKinds]watchstore.Config // session goroutine only
	obs      [numKinds]*observerBase     // session goroutine only
	retry    *backoff.Backoff            // of the connection loop; its goroutine only

	mu     sync.Mutex
	st     Status              // guarded by mu; Kinds are filled from stores by status()
	stores [numKinds]kindStore // guarded by mu (the slots; the stores are safe)
}

func newRemote(m *Manager, name string) *remote {
	r := &remote{m: m, name: name, log: m.log.With("cluster", name)}
	r.st.Name = name
	return r
}

// start runs the connection loop for data. Call stop first if one runs.
func (r *remote) start(ctx context.Context, data []byte) {
	r.data = data
	r.refuse(nil) // the config file changed: so may have the reason
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	r.m.wg.Add(1)
	go func() {
		defer r.m.wg.Done()
		defer close(r.done)
		r.loop(ctx, data)
	}()
}

// stop ends the connection loop and waits for it; the state stays.
func (r *remote) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
	r.setConnected(false)
}

func (r *remote) loop(ctx context.Context, data []byte) {
	r.retry = backoff.New(backoff.Policy{Min: r.m.cfg.BackoffMin, Max: r.m.cfg.BackoffMax}, r.m.clock)
	for {
		err := r.session(ctx, data)
		if ctx.Err() != nil {
			return
		}
		r.recordFailure(err)
		r.refuse(refusal(err))
		if errors.Is(err, ErrConfigFile) {
			r.log.Warn("remote cluster config file unusable; waiting for it to change", "error", err)
			<-ctx.Done()
			return
		}
		wait := r.retryWait(err, r.retry.Failure())
		r.log.Info("remote cluster connection failed, retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-r.m.clock.After(wait):
		}
		r.countReconnect()
	}
}

// accessDenied reports whether err is the remote etcd refusing our user:
// missing, without the role yet, or failing authentication.
func accessDenied(err error) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrUserNotFound, rpctypes.ErrAuthFailed,
		rpctypes.ErrGRPCPermissionDenied, rpctypes.ErrGRPCUserNotFound, rpctypes.ErrGRPCAuthFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// retryWait is the delay after a failed attempt whose backoff is wait: at
// most DeniedBackoffMax when the remote denied access.
func (r *remote) retryWait(err error, wait time.Duration) time.Duration {
	if accessDenied(err) {
		wait = min(wait, r.m.cfg.DeniedBackoffMax)
	}
	return wait
}

// session connects once and watches until ctx is done or the connection
// must be rebuilt.
func (r *remote) session(ctx context.Context, data []byte) error {
	cfg, err := ParseConfigFile(r.name, r.m.cfg.ClusterName, data)
	if err != nil {
		return err
	}
	client, err := kvstore.New(ctx, cfg, r.log)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer client.Close()

	cc, err := readClusterConfig(ctx, client, r.name)
	if err != nil {
		return explain(ctx, client, err)
	}
	if err := cc.Compatible(r.m.cfg.ClusterID, r.m.cfg.MaxConnectedClusters); err != nil {
		err = fmt.Errorf("%w: %w", ErrClusterConfig, err)
		if errors.Is(err, wire.ErrInvalidClusterID) {
			err = fmt.Errorf("%w: %w", ErrClusterIDConflict, err)
		}
		return err
	}
	r.m.mu.Lock()
	prevID := r.id
	r.m.mu.Unlock()
	if prevID != 0 && prevID != cc.ID {
		r.log.Warn("remote cluster ID changed, draining state of the old ID", "old", prevID, "new", cc.ID)
		r.drain()
	}
	oldPersisted, err := r.m.reserve(r, cc.ID)
	if err != nil {
		return err
	}
	if oldPersisted != 0 && oldPersisted != cc.ID {
		r.m.dp.Release(oldPersisted)
	}
	r.rem, r.dpID = wire.Remote{Name: r.name, ID: cc.ID, MaxConnectedClusters: cc.MaxConnected()}, cc.ID
	r.mu.Lock()
	r.st.ID, r.st.RefusedReason, r.st.Connected, r.st.LastChange = cc.ID, "", true, r.m.clock.Now()
	r.mu.Unlock()
	r.retry.Success()
	r.log.Info("connected to remote cluster", "id", cc.ID, "cached", cc.Capabilities.Cached)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var listed sync.WaitGroup
	listed.Add(int(numKinds))
	for k := range numKinds {
		s := r.kindStore(k, cc)
		var once sync.Once
		done := func() { once.Do(listed.Done) } // when listed, or on exit
		r.obs[k].synced = done
		wg.Go(func() {
			if err := s.RunOn(sctx, client); err != nil {
				cancel(fmt.Errorf("watch %s: %w", k, err))
			}
			done()
		})
	}
	wg.Go(func() {
		listed.Wait() // every watcher calls Done once: when listed, or on exit
		if sctx.Err() == nil {
			r.mu.Lock()
			r.st.Ready, r.st.Served, r.st.LastChange = true, true, r.m.clock.Now()
			r.st.LastError = "" // recovered; Failures keeps the count
			r.mu.Unlock()
			r.log.Info("remote cluster synced")
			r.m.dp.Release(cc.ID)
		}
	})
	wg.Go(func() { r.watchHeartbeat(sctx, client) })
	wg.Go(func() { r.watchClusterConfig(sctx, client, cc, cancel) })
	wg.Go(func() { r.probe(sctx, client, cancel) })
	<-sctx.Done()
	wg.Wait()
	r.mu.Lock()
	r.st.Ready, r.st.Connected = false, false
	r.mu.Unlock()
	cause := context.Cause(sctx)
	if errors.Is(cause, errStale) {
		r.log.Warn("withdrawing the state of an unreachable remote cluster", "ttl", r.m.cfg.StaleTTL)
		r.drain()
	}
	if errors.Is(cause, watchstore.ErrTooManyEntries) {
		r.log.Warn("refusing a remote cluster over the entry limit and withdrawing its state", "error", cause, "max_entries", r.m.cfg.MaxEntries)
		r.refuse(fmt.Errorf("%w (--remote-max-entries)", cause))
		r.drain()
	}
	if ctx.Err() != nil {
		return nil
	}
	return cause
}

func readClusterConfig(ctx context.Context, c *kvstore.Client, name string) (wire.ClusterConfig, error) {
	gctx, cancel := context.WithTimeout(ctx, c.Config().DialTimeout.D())
	defer cancel()
	resp, err := c.Etcd().Get(gctx, wire.ClusterConfigKey(name))
	if err != nil {
		return wire.ClusterConfig{}, fmt.Errorf("read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return wire.ClusterConfig{}, fmt.Errorf("%w: %s is missing", ErrClusterConfig, wire.ClusterConfigKey(name))
	}
	cc, err := wire.DecodeClusterConfig(resp.Kvs[0].Value)
	if err != nil {
		return wire.ClusterConfig{}, fmt.Errorf("%w: %w", ErrClusterConfig, err)
	}
	return cc, nil
}

// watchKey calls fn with the value of the single key (ok false when
// absent) now and after every change, until ctx is done. It reads the key
// alone, never a range: a remote user may read just that key.
func watchKey(ctx context.Context, c *kvstore.Client, key string, fn func(value []byte, ok bool)) {
	retry := backoff.New(watchKeyBackoff, clock.RealClock{})
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		resp, err := c.Etcd().Get(wctx, key)
		if err == nil {
			if len(resp.Kvs) > 0 {
				fn(resp.Kvs[0].Value, true)
			} else {
				fn(nil, false)
			}
			retry.Success()
			followKey(wctx, c.Etcd().Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(resp.Header.Revision+1)), fn)
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(retry.Failure()):
		}
	}
}

// followKey applies the events of wch until it fails or ctx is done. It
// does not wait for wch to close after ctx is done: while the etcd is
// unreachable the client closes a cancelled watch only once its gRPC stream
// gets a transport again, which would keep the session (and so the agent's
// shutdown) waiting until the remote came back.
func followKey(ctx context.Context, wch clientv3.WatchChan, fn func(value []byte, ok bool)) {
	for {
		select {
		case <-ctx.Done():
			return
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				return
			}
			for _, ev := range wr.Events {
				fn(ev.Kv.Value, ev.Type == clientv3.EventTypePut)
			}
		}
	}
}

// watchKeyBackoff spaces the retries of watchKey.
var watchKeyBackoff = backoff.Policy{Min: 50 * time.Millisecond, Max: 5 * time.Second}

// kindStore returns the store of kind k for a session with cluster config
// cc: the previous session's, or a new one if the prefix or canary changed
// (the cached capability was toggled), after draining the old one, whose
// entries the new prefix's listing could not withdraw.
func (r *remote) kindStore(k kind, cc wire.ClusterConfig) kindStore {
	cached := cc.Capabilities.Cached
	cfg := watchstore.Config{Prefix: wire.WatchPrefix(k.wire(), r.name, cached), Name: k.String(), Cluster: r.name, MaxEntries: r.m.cfg.MaxEntries}
	if cc.Capabilities.SyncedCanaries {
		cfg.SyncedKey = wire.WatchSyncedKey(k.wire(), r.name, cached)
	}
	r.mu.Lock()
	s := r.stores[k]
	r.mu.Unlock()
	if s != nil && r.storeCfg[k] == cfg {
		return s
	}
	if s != nil {
		s.Drain()
	}
	s, r.obs[k] = newKindStore(r, k, cfg)
	r.storeCfg[k] = cfg
	r.mu.Lock()
	r.stores[k] = s
	r.mu.Unlock()
	return s
}

func (r *remote) watchHeartbeat(ctx context.Context, c *kvstore.Client) {
	watchKey(ctx, c, wire.HeartbeatKey, func(value []byte, ok bool) {
		if !ok {
			return
		}
		t, err := wire.ParseTimestamp(value)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.st.LastHeartbeat = t
		r.mu.Unlock()
	})
}

func (r *remote) watchClusterConfig(ctx context.Context, c *kvstore.Client, cc wire.ClusterConfig, cancel context.CancelCauseFunc) {
	key := wire.ClusterConfigKey(r.name)
	watchKey(ctx, c, key, func(value []byte, ok bool) {
		if !ok {
			return // deleted: its apiserver re-asserts it
		}
		n, err := wire.DecodeClusterConfig(value)
		if err != nil || n.ID != cc.ID || n.MaxConnected() != cc.MaxConnected() || n.Capabilities.Cached != cc.Capabilities.Cached {
			cancel(errConfigChanged)
		}
	})
}

// probe tracks connectivity and withdraws the state after StaleTTL.
func (r *remote) probe(ctx context.Context, c *kvstore.Client, cancel context.CancelCauseFunc) {
	t := r.m.clock.NewTicker(r.m.cfg.ProbeInterval)
	defer t.Stop()
	lastUp := r.m.clock.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		pctx, pcancel := context.WithTimeout(ctx, r.m.cfg.ProbeTimeout)
		st := c.Status(pctx)
		pcancel()
		up := st.Healthy()
		var downErr error
		if !up {
			if downErr = probeError(st); downErr != nil {
				downErr = explain(ctx, c, downErr)
			}
		}
		now := r.m.clock.Now()
		r.mu.Lock()
		if up != r.st.Connected {
			r.st.LastChange = now
			if up {
				r.st.Reconnects++
				r.st.LastError = ""
			} else {
				r.st.Failures++
			}
		}
		r.st.Connected = up
		if downErr != nil {
			r.st.LastError = downErr.Error()
		}
		r.mu.Unlock()
		if up {
			lastUp = now
		} else if r.m.cfg.StaleTTL > 0 && now.Sub(lastUp) >= r.m.cfg.StaleTTL {
			cancel(errStale)
			return
		}
	}
}

// probeError is why a probe found the remote down: the client's last
// error, else the first endpoint's.
func probeError(st kvstore.Status) error {
	if st.LastError != nil {
		return st.LastError
	}
	for _, e := range st.Endpoints {
		if e.Err != nil {
			return fmt.Errorf("%s: %w", e.Endpoint, e.Err)
		}
	}
	return nil
}

// refusal returns err if it refuses the remote for good (until its config
// file or its cluster config changes): a cluster ID conflict, an unusable
// cluster config or config file. Anything else (unreachable, TLS, access
// denied, a timeout) is a failure that a retry may mend: nil.
func refusal(err error) error {
	for _, e := range []error{ErrClusterIDConflict, ErrClusterConfig, ErrConfigFile} {
		if errors.Is(err, e) {
			return err
		}
	}
	return nil
}

// refuse sets the refusal reason to err's, or clears it when err is nil:
// each attempt's outcome replaces the previous attempt's reason, so a
// reason never outlives its cause.
func (r *remote) refuse(err error) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.RefusedReason != reason {
		r.st.RefusedReason = reason
		r.st.LastChange = r.m.clock.Now()
	}
}

// explain replaces a bare timeout of a request to the remote's etcd by
// what a fresh connection to its endpoints finds (connection refused, a
// TLS failure), or says that they accept connections and etcd did not
// answer.
func explain(ctx context.Context, c *kvstore.Client, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return err
	}
	if cause := c.Diagnose(ctx); cause != nil {
		return fmt.Errorf("%w (%w)", cause, err)
	}
	return fmt.Errorf("%w (the endpoints accept connections, but etcd did not answer within %v)", err, c.Config().DialTimeout.D())
}

func (r *remote) recordFailure(err error) {
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Failures++
	r.st.LastError = err.Error()
}

func (r *remote) countReconnect() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Reconnects++
}

func (r *remote) setConnected(up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Connected != up {
		r.st.LastChange = r.m.clock.Now()
	}
	r.st.Connected, r.st.Ready = up, up && r.st.Ready
}

// drain withdraws everything the remote contributed. No session may run.
func (r *remote) drain() {
	r.mu.Lock()
	stores := r.stores
	r.st.Served = false
	r.mu.Unlock()
	for _, s := range stores {
		if s != nil {
			s.Drain()
		}
	}
}

func (r *remote) status() Status {
	r.mu.Lock()
	st, stores := r.st, r.stores
	r.mu.Unlock()
	st.Kinds = make([]KindStatus, numKinds)
	for k := range numKinds {
		st.Kinds[k] = kindStatus(k, stores[k])
		if st.Kinds[k].WaitingForCanary {
			st.WaitingForCanary, st.Ready = true, false
		}
	}
	st.PodCIDROverlap = r.overlap()
	return st
}
