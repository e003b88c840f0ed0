package kvstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Leases hands out etcd leases for written keys, at most MaxKeysPerLease
// keys per lease (etcd's cost of a put grows with the keys on its lease),
// keeps them alive, and reports a lost lease (expired or revoked) with the
// keys that were on it so that their owner re-writes them at once on a new
// lease.
type Leases struct {
	c       *Client
	log     *slog.Logger
	ttl     time.Duration
	maxKeys int
	onLost  func(keys []string) // called without locks held; must not block

	grantMu sync.Mutex // serialises grants so concurrent writers share leases

	mu      sync.Mutex
	current clientv3.LeaseID                         // lease that takes new keys; 0 if none
	keys    map[clientv3.LeaseID]map[string]struct{} // live leases and their keys
	byKey   map[string]clientv3.LeaseID
	granted map[clientv3.LeaseID]time.Duration // TTL granted by etcd
}

// NewLeases returns a lease manager using the client's LeaseTTL and
// MaxKeysPerLease. onLost is called with the keys of a lease found lost,
// from the goroutine that found it out (Run, or a caller of Expired).
func (c *Client) NewLeases(onLost func(keys []string)) *Leases {
	return &Leases{
		c:       c,
		log:     c.log,
		ttl:     c.cfg.LeaseTTL.D(),
		maxKeys: c.cfg.MaxKeysPerLease,
		onLost:  onLost,
		keys:    make(map[clientv3.LeaseID]map[string]struct{}),
		byKey:   make(map[string]clientv3.LeaseID),
		granted: make(map[clientv3.LeaseID]time.Duration),
	}
}

// Attach returns the lease to write key with: the lease key is already on,
// or the current lease if it has room, or a newly granted one.
func (l *Leases) Attach(ctx context.Context, key string) (clientv3.LeaseID, error) {
	if id, ok := l.tryAttach(key); ok {
		return id, nil
	}
	l.grantMu.Lock()
	defer l.grantMu.Unlock()
	if id, ok := l.tryAttach(key); ok { // granted by another writer meanwhile
		return id, nil
	}
	resp, err := l.c.etcd.Grant(ctx, max(int64((l.ttl+time.Second-1)/time.Second), 1))
	if err != nil {
		l.c.recordErr(fmt.Errorf("grant lease: %w", err))
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.current = resp.ID
	l.keys[resp.ID] = map[string]struct{}{key: {}}
	l.byKey[key] = resp.ID
	l.granted[resp.ID] = time.Duration(resp.TTL) * time.Second
	return resp.ID, nil
}

func (l *Leases) tryAttach(key string) (clientv3.LeaseID, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id, ok := l.byKey[key]; ok {
		return id, true
	}
	if l.current == 0 || len(l.keys[l.current]) >= l.maxKeys {
		return 0, false
	}
	l.keys[l.current][key] = struct{}{}
	l.byKey[key] = l.current
	return l.current, true
}

// Detach forgets key (deleted by its owner). A lease left without keys is
// no longer kept alive, unless it is the current one.
func (l *Leases) Detach(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id, ok := l.byKey[key]
	if !ok {
		return
	}
	delete(l.byKey, key)
	delete(l.keys[id], key)
	if len(l.keys[id]) == 0 && id != l.current {
		delete(l.keys, id)
		delete(l.granted, id)
	}
}

// Expired reports that etcd does not know lease id any more (for example a
// put failed with "requested lease not found"): the lease is dropped and
// onLost is called with its keys.
func (l *Leases) Expired(id clientv3.LeaseID) {
	l.mu.Lock()
	keys, ok := l.keys[id]
	if ok {
		delete(l.keys, id)
		delete(l.granted, id)
		for k := range keys {
			delete(l.byKey, k)
		}
		if l.current == id {
			l.current = 0
		}
	}
	l.mu.Unlock()
	if !ok {
		return
	}
	lost := make([]string, 0, len(keys))
	for k := range keys {
		lost = append(lost, k)
	}
	l.log.Warn("etcd lease lost; rewriting its keys", "lease", fmt.Sprintf("%x", int64(id)), "keys", len(lost))
	if l.onLost != nil {
		l.onLost(lost)
	}
}

// Count returns the number of live leases and of keys on them.
func (l *Leases) Count() (leases, keys int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys), len(l.byKey)
}

// Run keeps every lease alive with a keepalive each third of its TTL and
// reports leases that etcd no longer knows. It returns nil when ctx is done.
func (l *Leases) Run(ctx context.Context) error {
	tick := time.NewTicker(l.interval())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		l.mu.Lock()
		ids := make([]clientv3.LeaseID, 0, len(l.keys))
		for id := range l.keys {
			ids = append(ids, id)
		}
		l.mu.Unlock()
		for _, id := range ids {
			kctx, cancel := context.WithTimeout(ctx, l.c.cfg.DialTimeout.D())
			resp, err := l.c.etcd.KeepAliveOnce(kctx, id)
			cancel()
			switch {
			case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0):
				l.Expired(id)
			case err != nil && ctx.Err() == nil:
				// Unreachable etcd: a restarted member renews leases, so
				// keep trying; a lease that expired meanwhile shows up as
				// not found on the next round.
				l.c.recordErr(fmt.Errorf("keep lease %x alive: %w", int64(id), err))
			}
		}
	}
}

func (l *Leases) interval() time.Duration {
	return max(l.ttl/3, 100*time.Millisecond)
}
