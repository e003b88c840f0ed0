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
