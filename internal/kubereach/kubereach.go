package kubereach

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/apimachinery/pkg/version"
	"k8s.io/utils/clock"
)

// Config of a Monitor.
type Config struct {
	// Interval between probes; default 10s.
	Interval time.Duration
	// RepeatEvery bounds how often the warning is repeated while the
	// kube-apiserver stays unreachable; default 1m.
	RepeatEvery time.Duration
}

// Monitor probes and logs. Run it once.
type Monitor struct {
	cfg   Config
	probe func() error
	log   *slog.Logger
	clk   clock.WithTicker

	down      bool      // owned by Run: the last probe failed
	since     time.Time // owned by Run: start of the outage
	lastWarn  time.Time // owned by Run
	failCount int       // owned by Run: failed probes in this outage
}

// New returns a Monitor of the kube-apiserver probe asks something cheap
// (ProbeVersion).
func New(cfg Config, probe func() error, log *slog.Logger, clk clock.WithTicker) *Monitor {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.RepeatEvery <= 0 {
		cfg.RepeatEvery = time.Minute
	}
	return &Monitor{cfg: cfg, probe: probe, log: log, clk: clk}
}

// Run probes every Interval until ctx is done.
func (m *Monitor) Run(ctx context.Context) error {
	t := m.clk.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		m.Observe(m.probe())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// Observe records one probe's result and logs what changed; Run calls it.
func (m *Monitor) Observe(err error) {
	now := m.clk.Now()
	switch {
	case err == nil && m.down:
		m.log.Info("kube-apiserver reachable again", "after", now.Sub(m.since).Round(time.Second), "failed_probes", m.failCount)
		m.down = false
	case err == nil:
	case !m.down:
		m.down, m.since, m.lastWarn, m.failCount = true, now, now, 1
		m.log.Warn("cannot reach the own kube-apiserver", "error", err)
	default:
		m.failCount++
		if now.Sub(m.lastWarn) >= m.cfg.RepeatEvery {
			m.lastWarn = now
			m.log.Warn("still cannot reach the own kube-apiserver", "for", now.Sub(m.since).Round(time.Second), "failed_probes", m.failCount, "error", err)
		}
	}
}

// VersionGetter is the part of client-go's discovery client ProbeVersion
// uses.
type VersionGetter interface {
	ServerVersion() (*version.Info, error)
}

// ProbeVersion returns a probe that asks for the server's version (GET
// /version, allowed to every client).
func ProbeVersion(d VersionGetter) func() error {
	return func() error {
		_, err := d.ServerVersion()
		return err
	}
}
