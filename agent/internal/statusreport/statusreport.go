package statusreport

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// Source is where the publisher reads the remote clusters' state.
type Source interface {
	Status() []remotecluster.Status
}

// Config configures a Publisher.
type Config struct {
	// Namespace holds the status ConfigMap. Required.
	Namespace string
	// Cluster and Node name the report.
	Cluster, Node string
	// PollInterval is how often the state is compared with the last
	// published report (default 1s).
	PollInterval time.Duration
	// CountBudget is how many writes per second caused only by changed
	// entry, invalid or reconnect counts the agents of one cluster may make
	// together (default 10). Each agent waits Nodes()/CountBudget seconds
	// (at least PollInterval, at most Resync) after its last write before
	// writing a counts-only change, so that churn in a large mesh does not
	// turn every node into a writer while a small one stays current; other
	// changes (connected, ready, synced, errors, remotes added or removed)
	// are written at the next poll.
	CountBudget float64
	// Nodes returns the number of nodes in the agent's cluster; nil or a
	// value below 1 counts as 1.
	Nodes func() int
	// Resync is the longest time between two writes (default 30s); Publish
	// skips a write that would not change the stored report.
	Resync time.Duration
	// RetryMax caps the backoff between failed writes (default Resync).
	RetryMax time.Duration
	// Timeout bounds one write (default 10s).
	Timeout time.Duration
	// RefusedPolicies, if set, returns the network policies the agent
	// refused, for the report.
	RefusedPolicies func() []meshstatus.PolicyRefusal
	// WorldIngress, if set, says whether the agent's pods' ingress policy
	// decides world on the host's path.
	WorldIngress func() string
}

func (c *Config) withDefaults() {
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.CountBudget <= 0 {
		c.CountBudget = 10
	}
	if c.Resync <= 0 {
		c.Resync = 30 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = c.Resync
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
}

// Publisher writes the agent's report.
type Publisher struct {
	cfg Config
	src Source
	cms meshstatus.ConfigMaps
	log *slog.Logger
	clk clock.WithTicker
}

// New returns a publisher of src's state into cms.
func New(cfg Config, src Source, cms meshstatus.ConfigMaps, log *slog.Logger, clk clock.WithTicker) *Publisher {
	cfg.withDefaults()
	return &Publisher{cfg: cfg, src: src, cms: cms, log: log, clk: clk}
}

// Run publishes until ctx is done. Write failures are logged (once per
// distinct error) and retried with exponential backoff up to RetryMax; they
// never stop the agent.
func (p *Publisher) Run(ctx context.Context) error {
	if p.cfg.Namespace == "" {
		return fmt.Errorf("status report: empty namespace")
	}
	t := p.clk.NewTicker(p.cfg.PollInterval)
	defer t.Stop()
	var (
		last     *meshstatus.AgentReport // last published
		lastTime time.Time
		lastErr  string
		retry    = backoff.New(backoff.Policy{Min: p.cfg.PollInterval, Max: p.cfg.RetryMax}, p.clk)
		retryAt  time.Time // no write before, after a failure
	)
	for {
		r := Build(p.cfg.Cluster, p.cfg.Node, p.src.Status())
		if p.cfg.RefusedPolicies != nil {
			r.RefusedPolicies = p.cfg.RefusedPolicies()
		}
		if p.cfg.WorldIngress != nil {
			r.WorldIngress = p.cfg.WorldIngress()
		}
		now := p.clk.Now()
		if p.due(last, r, now.Sub(lastTime)) && !now.Before(retryAt) {
			pctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
			err := meshstatus.Publish(pctx, p.cms, p.cfg.Namespace, &r)
			cancel()
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				wait := retry.Failure()
				retryAt = p.clk.Now().Add(wait)
				if err.Error() != lastErr {
					p.log.Warn("cannot publish the status report; retrying", "error", err, "retry_in", wait)
					lastErr = err.Error()
				}
			default:
				if lastErr != "" {
					p.log.Info("status report published again")
					lastErr = ""
				}
				retry.Success()
				retryAt = time.Time{}
				last, lastTime = &r, p.clk.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// due reports whether r must be written, given the last written report and
// the time since it was written.
func (p *Publisher) due(last *meshstatus.AgentReport, r meshstatus.AgentReport, since time.Duration) bool {
	switch {
	case last == nil || since >= p.cfg.Resync:
		return true
	case reflect.DeepEqual(*last, r):
		return false
	case reflect.DeepEqual(withoutCounts(*last), withoutCounts(r)):
		return since >= p.countInterval()
	default:
		return true
	}
}

// countInterval is the shortest time between a write and a counts-only one.
func (p *Publisher) countInterval() time.Duration {
	nodes := 1
	if p.cfg.Nodes != nil {
		nodes = max(p.cfg.Nodes(), 1)
	}
	d := time.Duration(float64(nodes) / p.cfg.CountBudget * float64(time.Second))
	return min(max(d, p.cfg.PollInterval), p.cfg.Resync)
}

// withoutCounts returns r with its counters zeroed.
func withoutCounts(r meshstatus.AgentReport) meshstatus.AgentReport {
	rs := make([]meshstatus.Remote, len(r.Remotes))
	for i, m := range r.Remotes {
		m.Entries, m.Invalid, m.Reconnects, m.Refused = nil, 0, 0, nil
		rs[i] = m
	}
	r.Remotes = rs
	return r
}

// Build returns the report of the agent on node of cluster for the remotes
// in rs. A refused remote's reason shows as its last error.
func Build(cluster, node string, rs []remotecluster.Status) meshstatus.AgentReport {
	r := meshstatus.AgentReport{Version: meshstatus.SchemaVersion, Cluster: cluster, Node: node, Remotes: make([]meshstatus.Remote, 0, len(rs))}
	for _, s := range rs {
		m := meshstatus.Remote{
			Name: s.Name, ClusterID: s.ID, Connected: s.Connected, Ready: s.Ready, WaitingForCanary: s.WaitingForCanary, Cached: s.Cached,
			Synced: map[string]bool{}, Entries: map[string]int{},
			Reconnects: int(s.Reconnects), LastError: s.LastError, LastChange: s.LastChange.UTC().Truncate(time.Second),
		}
		if !s.ProgrammedAt.IsZero() {
			// Milliseconds: the report is rewritten only when it changes.
			m.ProgrammedAt, m.SyncSeconds = s.ProgrammedAt.UTC().Truncate(time.Millisecond), s.SyncTook.Round(time.Millisecond).Seconds()
		}
		if s.RefusedReason != "" {
			m.LastError = meshstatus.RefusedPrefix + s.RefusedReason
		} else if s.PodCIDROverlap != "" {
			// Not ready: some of the remote's pods cannot be reached.
			m.LastError, m.Ready = meshstatus.RefusedPrefix+s.PodCIDROverlap, false
		}
		for _, c := range s.Refused {
			if m.Refused == nil {
				m.Refused = map[string]int{}
			}
			m.Refused[c.Reason] = int(c.Count)
		}
		for _, c := range s.Conflicts {
			m.Conflicts = append(m.Conflicts, meshstatus.Conflict{Kind: c.Kind, Prefix: c.Prefix, Claimants: c.Claimants})
		}
		for _, k := range s.Kinds {
			name := kindName(k.Kind)
			m.Synced[name] = k.Synced
			m.Entries[name] = int(k.Entries)
			m.Invalid += int(k.Invalid)
		}
		r.Remotes = append(r.Remotes, m)
	}
	return r
}

// kindName maps the manager's kind names to the report's.
func kindName(k string) string {
	if k == "ipcache" {
		return meshstatus.KindIPCache
	}
	return k
}
