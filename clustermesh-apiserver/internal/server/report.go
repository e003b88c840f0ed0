package server

import (
	"context"
	"sync"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/kvstore/kvstoremesh"
)

// countingStore counts the keys handed to a Store (the entries the
// apiserver maintains under its prefix), for the status report.
type countingStore struct {
	Store
	mu   sync.Mutex
	keys map[string]struct{}
}

func newCountingStore(s Store) *countingStore {
	return &countingStore{Store: s, keys: map[string]struct{}{}}
}

func (c *countingStore) Upsert(key string, value []byte) {
	c.mu.Lock()
	c.keys[key] = struct{}{}
	c.mu.Unlock()
	c.Store.Upsert(key, value)
}

func (c *countingStore) Delete(key string) {
	c.mu.Lock()
	delete(c.keys, key)
	c.mu.Unlock()
	c.Store.Delete(key)
}

// Len returns the number of keys the store maintains.
func (c *countingStore) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

// lastErrorer is implemented by stores that remember their last failed
// write (kvstore/syncstore).
type lastErrorer interface{ LastError() error }

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Report returns the server's status report (meshstatus): readiness, per
// kind whether the sync canary is written and how many entries are
// maintained, the identities allocated and the last write error seen.
func (s *Server) Report(ctx context.Context) meshstatus.APIServerReport {
	r := meshstatus.APIServerReport{
		Cluster:    s.cfg.ClusterName,
		ClusterID:  s.cfg.ClusterID,
		Ready:      s.Ready(ctx) == nil,
		Synced:     map[string]bool{meshstatus.KindIdentities: closed(s.idsDone)},
		Entries:    map[string]int{meshstatus.KindIdentities: s.alloc.Len()},
		Identities: s.alloc.Len(),
	}
	for kind, st := range s.kinds {
		r.Synced[kind] = closed(st.Synced())
		r.Entries[kind] = st.Len()
	}
	for _, st := range s.stores {
		if le, ok := st.(lastErrorer); ok {
			if err := le.LastError(); err != nil {
				r.LastError = err.Error()
			}
		}
	}
	return r
}

// cachedRemotes turns the kvstoremesh status into the report's form.
func cachedRemotes(sts []kvstoremesh.Status) []meshstatus.CachedRemote {
	out := make([]meshstatus.CachedRemote, 0, len(sts))
	for _, st := range sts {
		c := meshstatus.CachedRemote{
			Name: st.Name, ClusterID: st.ID, Connected: st.Connected, Synced: st.Synced, Served: st.Served,
			Entries: map[string]int{}, LastError: st.LastError,
		}
		if st.RefusedReason != "" {
			c.LastError = meshstatus.RefusedPrefix + st.RefusedReason
		}
		for _, k := range st.Kinds {
			c.Entries[k.Kind] = int(k.Entries)
			c.Invalid += int(k.Invalid)
			c.WaitingForCanary = c.WaitingForCanary || k.WaitingForCanary
		}
		out = append(out, c)
	}
	return out
}
