package peer

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// latencyNet holds the addresses the latency phase puts: 10.250.0.0/16.
var latencyNet = netip.MustParsePrefix("10.250.0.0/16")

// recorder passes batches to the datapath and notes, once Apply has
// returned (the entries are in the maps), how many tunnel and ipcache
// entries were programmed and when each latency address was.
type recorder struct {
	datapath.Writer

	mu      sync.Mutex
	tunnels int                      // tunnel upserts applied
	ipcache int                      // ipcache upserts applied
	applied map[netip.Addr]time.Time // latency address -> first applied
	writes  []time.Duration          // the Apply calls that first wrote them
}

func newRecorder(w datapath.Writer) *recorder {
	return &recorder{Writer: w, applied: map[netip.Addr]time.Time{}}
}

func (r *recorder) Apply(ctx context.Context, b datapath.Batch) error {
	start := time.Now()
	if err := r.Writer.Apply(ctx, b); err != nil {
		return err
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tunnels += len(b.UpsertTunnels)
	r.ipcache += len(b.UpsertIPCache)
	for _, e := range b.UpsertIPCache {
		if a := e.Prefix.Addr(); latencyNet.Contains(a) {
			if _, ok := r.applied[a]; !ok {
				r.applied[a] = now
				r.writes = append(r.writes, now.Sub(start))
			}
		}
	}
	return nil
}

// writeTimes returns how long the Apply calls that wrote latency
// addresses took, sorted.
func (r *recorder) writeTimes() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := slices.Clone(r.writes)
	slices.Sort(w)
	return w
}

func (r *recorder) counts() (tunnels, ipcache, latency int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tunnels, r.ipcache, len(r.applied)
}

func (r *recorder) appliedAt(a netip.Addr) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.applied[a]
	return t, ok
}
