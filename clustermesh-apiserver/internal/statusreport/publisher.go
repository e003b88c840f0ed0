package statusreport

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// Defaults of Config.
const (
	DefaultInterval = 30 * time.Second
	DefaultPoll     = time.Second
)

// ErrNoNamespace is returned by New without a namespace.
var ErrNoNamespace = errors.New("status namespace required")

// Config configures a Publisher.
type Config struct {
	// Namespace of the ConfigMap. Required.
	Namespace string
	// Interval is the longest time between two publications (default
	// DefaultInterval).
	Interval time.Duration
	// Poll is how often the report is built and compared with the last one
	// published (default DefaultPoll).
	Poll time.Duration
}

// Publisher writes the report of a source into its ConfigMap.
type Publisher struct {
	cfg    Config
	cms    meshstatus.ConfigMaps
	report func(context.Context) meshstatus.APIServerReport
	clock  clock.WithTicker
	log    *slog.Logger
}

// New returns a publisher of the reports that report builds.
func New(cfg Config, cms meshstatus.ConfigMaps, report func(context.Context) meshstatus.APIServerReport, clk clock.WithTicker, log *slog.Logger) (*Publisher, error) {
	if cfg.Namespace == "" {
		return nil, ErrNoNamespace
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	return &Publisher{cfg: cfg, cms: cms, report: report, clock: clk, log: log}, nil
}

// Run publishes at once, on every change of the report and at least every
// Interval, until ctx is done. Failed publications are logged and retried
// on the next poll; Run returns nil when ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	tick := p.clock.NewTicker(p.cfg.Poll)
	defer tick.Stop()
	var (
		last     *meshstatus.APIServerReport // last report published
		lastTime time.Time
	)
	for {
		r := p.report(ctx)
		if last == nil || !reflect.DeepEqual(*last, r) || p.clock.Since(lastTime) >= p.cfg.Interval {
			pub := r // Publish sets the version on its argument
			if err := meshstatus.Publish(ctx, p.cms, p.cfg.Namespace, &pub); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.log.Warn("cannot publish the status report; retrying", "namespace", p.cfg.Namespace, "error", err)
			} else {
				last, lastTime = &r, p.clock.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		}
	}
}
