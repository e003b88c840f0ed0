package remoteconn

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
)

// LoopConfig configures Loop.
type LoopConfig struct {
	// Retry spaces the attempts; the session calls its Success once
	// connected, so that a later failure starts from the minimum again
	// after a period of health.
	Retry *backoff.Backoff
	// DeniedBackoffMax bounds the delay after an attempt the remote's etcd
	// refused for want of a user or permission: that is how a remote looks
	// between `clustermesh connect` and its apiserver creating our user.
	DeniedBackoffMax time.Duration
	Clock            clock.Clock
	Log              *slog.Logger
}

// Loop runs session until ctx is done: after each failed session it calls
// failed with the error, waits (Retry, at most DeniedBackoffMax when access
// was denied) and calls again before the next attempt. A session that
// fails with ErrConfigFile is not retried: the file must change (the
// caller then restarts the loop).
func Loop(ctx context.Context, cfg LoopConfig, session func(context.Context) error, failed func(error), again func()) {
	for {
		err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		failed(err)
		if errors.Is(err, ErrConfigFile) {
			cfg.Log.Warn("remote cluster config file unusable; waiting for it to change", "error", err)
			<-ctx.Done()
			return
		}
		wait := RetryWait(err, cfg.Retry.Failure(), cfg.DeniedBackoffMax)
		cfg.Log.Info("remote cluster connection failed, retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-cfg.Clock.After(wait):
		}
		again()
	}
}

// RetryWait is the delay after a failed attempt whose backoff is wait: at
// most deniedMax when the remote denied access.
func RetryWait(err error, wait, deniedMax time.Duration) time.Duration {
	if AccessDenied(err) {
		wait = min(wait, deniedMax)
	}
	return wait
}

// Timing bounds the connection loop, the probes and the directory rescan
// of a process that connects to remote clusters.
type Timing struct {
	// BackoffMin and BackoffMax bound the delay between connection
	// attempts; DeniedBackoffMax the delay while the remote denies access.
	BackoffMin, BackoffMax, DeniedBackoffMax time.Duration
	// ProbeInterval is how often a connected remote's etcd is probed, and
	// ProbeTimeout how long a probe may take.
	ProbeInterval, ProbeTimeout time.Duration
	// RescanInterval rescans the config directory even without fsnotify
	// events.
	RescanInterval time.Duration
}

// DefaultTiming returns the defaults of the agent and the kvstoremesh.
func DefaultTiming() Timing {
	return Timing{
		BackoffMin:       500 * time.Millisecond,
		BackoffMax:       time.Minute,
		DeniedBackoffMax: 5 * time.Second,
		ProbeInterval:    10 * time.Second,
		ProbeTimeout:     5 * time.Second,
		RescanInterval:   time.Minute,
	}
}

// WithDefaults returns t with every unset (or inconsistent) field set from
// DefaultTiming: BackoffMax at least BackoffMin, DeniedBackoffMax at most
// BackoffMax.
func (t Timing) WithDefaults() Timing {
	d := DefaultTiming()
	if t.BackoffMin <= 0 {
		t.BackoffMin = d.BackoffMin
	}
	if t.BackoffMax < t.BackoffMin {
		t.BackoffMax = max(d.BackoffMax, t.BackoffMin)
	}
	if t.DeniedBackoffMax <= 0 {
		t.DeniedBackoffMax = min(d.DeniedBackoffMax, t.BackoffMax)
	}
	if t.ProbeInterval <= 0 {
		t.ProbeInterval = d.ProbeInterval
	}
	if t.ProbeTimeout <= 0 {
		t.ProbeTimeout = d.ProbeTimeout
	}
	if t.RescanInterval <= 0 {
		t.RescanInterval = d.RescanInterval
	}
	return t
}
