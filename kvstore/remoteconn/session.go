package remoteconn

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Causes that end a session.
var (
	// ErrStale: the remote was unreachable for longer than the stale TTL.
	ErrStale = errors.New("unreachable for longer than the stale TTL: state withdrawn")
	// ErrConfigChanged: the remote's cluster config changed its ID,
	// maxConnectedClusters or cached capability.
	ErrConfigChanged = errors.New("remote cluster config changed")
)

// ErrCacheWithdrawn is the last error of a remote read through a
// kvstoremesh cache whose cluster config copy is gone: the kvstoremesh
// withdrew it (refused, stale or over the entry limit).
var ErrCacheWithdrawn = errors.New("withdrawn by the kvstoremesh: its cluster config copy is gone")

// WatchKey calls fn with the value of the single key (ok false when
// absent) now and after every change, until ctx is done. It reads the key
// alone, never a range: a remote user may read just that key.
func WatchKey(ctx context.Context, c *kvstore.Client, key string, fn func(value []byte, ok bool)) {
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

// watchKeyBackoff spaces the retries of WatchKey.
var watchKeyBackoff = backoff.Policy{Min: 50 * time.Millisecond, Max: 5 * time.Second}

// WatchHeartbeat calls fn with every valid cilium/.heartbeat timestamp
// until ctx is done.
func WatchHeartbeat(ctx context.Context, c *kvstore.Client, fn func(time.Time)) {
	WatchKey(ctx, c, wire.HeartbeatKey, func(value []byte, ok bool) {
		if !ok {
			return
		}
		t, err := wire.ParseTimestamp(value)
		if err != nil {
			return
		}
		fn(t)
	})
}

// WatchClusterConfig ends the session (cancel with ErrConfigChanged) when
// the cluster config of name no longer matches cc: another ID,
// maxConnectedClusters or cached capability, or an invalid value. A
// deleted config does not end it (a remote's apiserver re-asserts it; a
// kvstoremesh deletes its copy when it withdraws the remote, whose
// deletions the readers must still see). onChange (may be nil) is told
// whether the config is there: false when deleted, true for each valid
// value.
func WatchClusterConfig(ctx context.Context, c *kvstore.Client, name string, cc wire.ClusterConfig, cancel context.CancelCauseFunc, onChange func(present bool)) {
	key := wire.ClusterConfigKey(name)
	WatchKey(ctx, c, key, func(value []byte, ok bool) {
		if !ok {
			if onChange != nil {
				onChange(false)
			}
			return
		}
		n, err := wire.DecodeClusterConfig(value)
		if err != nil || n.ID != cc.ID || n.MaxConnected() != cc.MaxConnected() || n.Capabilities.Cached != cc.Capabilities.Cached {
			cancel(ErrConfigChanged)
			return
		}
		if onChange != nil {
			onChange(true)
		}
	})
}

// ProbeConfig configures Probe.
type ProbeConfig struct {
	// Interval is how often the etcd is probed, Timeout how long a probe
	// may take.
	Interval, Timeout time.Duration
	// StaleTTL: Probe returns ErrStale once the etcd has been unreachable
	// this long (0: never).
	StaleTTL time.Duration
	Clock    clock.WithTicker
}

// Probe checks c every Interval until ctx is done (nil) or the remote has
// been unreachable for StaleTTL (ErrStale). report gets every outcome: up,
// and when down why (nil if unknown), at now.
func Probe(ctx context.Context, c *kvstore.Client, cfg ProbeConfig, report func(up bool, downErr error, now time.Time)) error {
	t := cfg.Clock.NewTicker(cfg.Interval)
	defer t.Stop()
	lastUp := cfg.Clock.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		pctx, pcancel := context.WithTimeout(ctx, cfg.Timeout)
		st := c.Status(pctx)
		pcancel()
		up := st.Healthy()
		var downErr error
		if !up {
			if downErr = ProbeError(st); downErr != nil {
				downErr = Explain(ctx, c, downErr)
			}
		}
		now := cfg.Clock.Now()
		report(up, downErr, now)
		if up {
			lastUp = now
		} else if cfg.StaleTTL > 0 && now.Sub(lastUp) >= cfg.StaleTTL {
			return ErrStale
		}
	}
}

// ProbeError is why a probe found the remote down: the client's last
// error, else the first endpoint's.
func ProbeError(st kvstore.Status) error {
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

// Health is the connection state that a status keeps of one remote.
type Health struct {
	// Connected: a session runs and the last probe reached the etcd.
	Connected bool
	// Failures counts failed attempts and lost connectivity, Reconnects
	// new sessions and regained connectivity.
	Failures, Reconnects uint64
	// LastError is the error of the current outage or failed attempt.
	LastError  string
	LastChange time.Time
}

// Probed records the outcome of a Probe: up, or down for downErr (nil:
// unknown), at now.
func (h *Health) Probed(up bool, downErr error, now time.Time) {
	if up != h.Connected {
		h.LastChange = now
		if up {
			h.Reconnects++
			h.LastError = ""
		} else {
			h.Failures++
		}
	}
	h.Connected = up
	if downErr != nil {
		h.LastError = downErr.Error()
	}
}
