package remotecluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// remote is the member of one configured remote cluster. Its kind stores
// survive sessions (so a new session's listing withdraws what vanished
// meanwhile) and run only within a session; the set drains them when no
// session runs.
type remote struct {
	m    *Manager
	name string
	log  *slog.Logger

	// rem is the remote as the current session validates its entries
	// against, its ID the cluster ID the stores' entries are programmed
	// under; written by Connected before the readers run.
	rem wire.Remote

	storeCfg [numKinds]watchstore.Config // session goroutine only
	obs      [numKinds]*observerBase     // session goroutine only

	mu     sync.Mutex
	stores [numKinds]kindStore // guarded by mu (the slots; the stores are safe)
	// session counts the sessions; connectedAt, programmedAt and syncTook
	// are the current one's (see Status.ProgrammedAt).
	session      uint64    // guarded by mu
	connectedAt  time.Time // guarded by mu
	programmedAt time.Time // guarded by mu
}

// afterFlusher is the datapath sink's report of the flush that holds what
// was handed in (dpsync.Reconciler).
type afterFlusher interface {
	AfterFlush(fn func(at time.Time))
}

// steadySink is a datapath sink that applies a steady cluster's single
// changes on the caller's goroutine when it is idle (dpsync.Reconciler).
type steadySink interface {
	Steady(id uint32, steady bool)
}

// steady tells the datapath sink whether the cluster ID the stores
// program is in steady state: from the session's sync to the next session
// or drain, whose listing or withdrawal comes in bursts.
func (r *remote) steady(on bool) {
	if s, ok := r.m.dp.(steadySink); ok && r.rem.ID != 0 {
		s.Steady(r.rem.ID, on)
	}
}

func newRemote(m *Manager, name string, log *slog.Logger) *remote {
	return &remote{m: m, name: name, log: log}
}

// Connected tells the restore hold the remote's ID and returns one reader
// per kind.
func (r *remote) Connected(s remoteconn.Session) ([]remoteconn.Reader, error) {
	r.m.hold.Reserved(r.name, s.Remote.ID)
	r.steady(false) // the previous session's ID
	r.rem = s.Remote
	r.steady(false)
	r.mu.Lock()
	r.session++
	r.connectedAt, r.programmedAt = r.m.clock.Now(), time.Time{}
	r.mu.Unlock()
	readers := make([]remoteconn.Reader, 0, numKinds)
	for k := range numKinds {
		st := r.kindStore(k, s)
		readers = append(readers, func(ctx context.Context, c *kvstore.Client, listed func()) error {
			r.obs[k].synced = listed
			if err := st.RunOn(ctx, c); err != nil {
				return fmt.Errorf("watch %s: %w", k, err)
			}
			return nil
		})
	}
	return readers, nil
}

// Synced tells the restore hold that every kind delivered its full state,
// and asks the datapath sink when the flush that holds it returns.
func (r *remote) Synced(s remoteconn.Session) {
	r.m.hold.Synced(s.Remote.ID)
	r.steady(true)
	af, ok := r.m.dp.(afterFlusher)
	if !ok {
		return
	}
	r.mu.Lock()
	session := r.session
	r.mu.Unlock()
	af.AfterFlush(func(at time.Time) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.session == session && r.programmedAt.IsZero() {
			r.programmedAt = at
		}
	})
}

// Removed withdraws the remote's state and tells the restore hold.
func (r *remote) Removed(id uint32) {
	r.Drain()
	r.m.hold.Removed(r.name, id)
}

// kindStore returns the store of kind k for session s: the previous
// session's, or a new one if the prefix or canary changed
// (the cached capability was toggled), after draining the old one, whose
// entries the new prefix's listing could not withdraw.
func (r *remote) kindStore(k kind, s remoteconn.Session) kindStore {
	cfg := s.ReaderConfig(k.wire(), k.String(), r.m.cfg.MaxEntries)
	r.mu.Lock()
	old := r.stores[k]
	r.mu.Unlock()
	if old != nil && r.storeCfg[k] == cfg {
		return old
	}
	if old != nil {
		old.Drain()
	}
	st, obs := newKindStore(r, k, cfg)
	r.obs[k], r.storeCfg[k] = obs, cfg
	r.mu.Lock()
	r.stores[k] = st
	r.mu.Unlock()
	return st
}

// Drain withdraws everything the remote contributed. No session runs.
func (r *remote) Drain() {
	r.steady(false)
	r.mu.Lock()
	stores := r.stores
	r.mu.Unlock()
	for _, s := range stores {
		if s != nil {
			s.Drain()
		}
	}
}

// status is the remote's status for its connection state cs.
func (r *remote) status(cs remoteconn.State) Status {
	st := Status{
		Name: cs.Name, ID: cs.ID, Connected: cs.Connected, Ready: cs.Ready, Served: cs.Served,
		Failures: cs.Failures, Reconnects: cs.Reconnects, LastError: cs.LastError, LastChange: cs.LastChange,
		RefusedReason: cs.RefusedReason, Cached: cs.Cached, LastHeartbeat: cs.LastHeartbeat,
	}
	r.mu.Lock()
	stores := r.stores
	if !r.programmedAt.IsZero() {
		st.ProgrammedAt, st.SyncTook = r.programmedAt, r.programmedAt.Sub(r.connectedAt)
	}
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
