package dpsync

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// recorder keeps the last batch and can fail the next Apply.
type recorder struct {
	*memory.Datapath
	last datapath.Batch
	fail bool
}

func (r *recorder) Apply(ctx context.Context, b datapath.Batch) error {
	r.last = b
	if r.fail {
		r.fail = false
		return errors.New("injected")
	}
	return r.Datapath.Apply(ctx, b)
}

// shape says what a batch did to services: "upsert n", "patch +u -d",
// "delete", one per entry, sorted.
func shape(b datapath.Batch) string {
	var out []string
	for _, s := range b.UpsertServices {
		out = append(out, fmt.Sprintf("upsert %d", len(s.Backends)))
	}
	for _, p := range b.PatchServices {
		out = append(out, fmt.Sprintf("patch +%d -%d", len(p.Upsert), len(p.Delete)))
	}
	for range b.DeleteServices {
		out = append(out, "delete")
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// backendSet renders a programmed service's backends, sorted.
func backendSet(dp *memory.Datapath, fe datapath.Frontend) string {
	s, ok := dp.Service(fe)
	if !ok {
		return "absent"
	}
	slices.SortFunc(s.Backends, func(a, b datapath.Backend) int { return a.Addr.Compare(b.Addr) })
	var out []string
	for _, b := range s.Backends {
		out = append(out, fmt.Sprintf("%s/%d/%d", b.Addr.Addr(), b.ClusterID, b.Weight))
	}
	return strings.Join(out, " ")
}

// TestServicePatches: backend changes reach the datapath as patches of the
// changed backends only; whole upserts, deletes, failures and restored
// services as the cases say.
func TestServicePatches(t *testing.T) {
	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	be := func(ip string, c uint32, w uint16) datapath.Backend {
		return datapath.Backend{Addr: netip.MustParseAddrPort(ip + ":8080"), ClusterID: c, Weight: w}
	}
	addr := func(ip string) netip.AddrPort { return netip.MustParseAddrPort(ip + ":8080") }
	ctx := context.Background()
	dp := &recorder{Datapath: memory.New()}
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	steps := []struct {
		name    string
		do      func()
		fail    bool
		shape   string // of the batch applied
		backend string // programmed afterwards
	}{
		{"whole service", func() {
			r.UpsertService(datapath.Service{Frontend: fe, Backends: []datapath.Backend{be("10.1.0.1", 1, 1), be("10.1.0.2", 1, 1), be("10.2.0.1", 2, 0)}})
		}, false, "upsert 3", "10.1.0.1/1/1 10.1.0.2/1/1 10.2.0.1/2/0"},
		{"add", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.3", 1, 1)}})
		}, false, "patch +1 -0", "10.1.0.1/1/1 10.1.0.2/1/1 10.1.0.3/1/1 10.2.0.1/2/0"},
		{"remove", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{addr("10.1.0.1")}})
		}, false, "patch +0 -1", "10.1.0.2/1/1 10.1.0.3/1/1 10.2.0.1/2/0"},
		{"weight and state change", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.2.0.1", 2, 1), be("10.1.0.2", 1, 0)}})
		}, false, "patch +2 -0", "10.1.0.2/1/0 10.1.0.3/1/1 10.2.0.1/2/1"},
		{"two patches before a flush: one patch", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.4", 1, 1)}})
			r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{addr("10.1.0.3")}})
		}, false, "patch +1 -1", "10.1.0.2/1/0 10.1.0.4/1/1 10.2.0.1/2/1"},
		{"added and removed before a flush: a delete", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.5", 1, 1)}})
			r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{addr("10.1.0.5")}})
		}, false, "patch +0 -1", "10.1.0.2/1/0 10.1.0.4/1/1 10.2.0.1/2/1"},
		{"failed patch", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.6", 1, 1)}})
		}, true, "patch +1 -0", "10.1.0.2/1/0 10.1.0.4/1/1 10.2.0.1/2/1"},
		{"retried with the next change", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{addr("10.1.0.2")}})
		}, false, "patch +1 -1", "10.1.0.4/1/1 10.1.0.6/1/1 10.2.0.1/2/1"},
		{"patch then whole upsert: the upsert", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.7", 1, 1)}})
			r.UpsertService(datapath.Service{Frontend: fe, Backends: []datapath.Backend{be("10.1.0.8", 1, 1)}})
		}, false, "upsert 1", "10.1.0.8/1/1"},
		{"whole upsert then patch: the patched upsert", func() {
			r.UpsertService(datapath.Service{Frontend: fe, Backends: []datapath.Backend{be("10.1.0.8", 1, 1), be("10.1.0.9", 1, 1)}})
			r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{addr("10.1.0.8")}})
		}, false, "upsert 1", "10.1.0.9/1/1"},
		{"patch then delete: the delete", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.7", 1, 1)}})
			r.DeleteService(fe)
		}, false, "delete", "absent"},
		{"patch of an unknown frontend: a whole upsert", func() {
			r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.7", 1, 1)}})
		}, false, "upsert 1", "10.1.0.7/1/1"},
	}
	for _, st := range steps {
		st.do()
		dp.fail = st.fail
		err := r.Flush(ctx)
		if (err != nil) != st.fail {
			t.Fatalf("%s: flush: %v", st.name, err)
		}
		if got := shape(dp.last); got != st.shape {
			t.Errorf("%s: batch %q, want %q", st.name, got, st.shape)
		}
		if got := backendSet(dp.Datapath, fe); got != st.backend {
			t.Errorf("%s: programmed %q, want %q", st.name, got, st.backend)
		}
	}
}

// TestServicePatchOfRestored: while a restored service's cluster is held,
// a patch goes out as a whole upsert that keeps the held backends.
func TestServicePatchOfRestored(t *testing.T) {
	ctx := context.Background()
	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	be := func(ip string, c uint32) datapath.Backend {
		return datapath.Backend{Addr: netip.MustParseAddrPort(ip + ":8080"), ClusterID: c, Weight: 1}
	}
	dp := &recorder{Datapath: memory.New()}
	if err := dp.Datapath.Apply(ctx, datapath.Batch{UpsertServices: []datapath.Service{{Frontend: fe,
		Backends: []datapath.Backend{be("10.1.0.1", 1), be("10.2.0.1", 2)}}}}); err != nil {
		t.Fatal(err)
	}
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	r.UpsertService(datapath.Service{Frontend: fe, Backends: []datapath.Backend{be("10.1.0.1", 1)}})
	r.Release(1)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.PatchService(datapath.ServicePatch{Frontend: fe, Upsert: []datapath.Backend{be("10.1.0.2", 1)}})
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := shape(dp.last), "upsert 3"; got != want {
		t.Errorf("batch %q, want %q", got, want)
	}
	if got, want := backendSet(dp.Datapath, fe), "10.1.0.1/1/1 10.1.0.2/1/1 10.2.0.1/2/1"; got != want {
		t.Errorf("programmed %q, want %q", got, want)
	}
	// Cluster 2 released: its held backend goes, and later changes are patches.
	r.Release(2)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{netip.MustParseAddrPort("10.1.0.1:8080")}})
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := shape(dp.last), "patch +0 -1"; got != want {
		t.Errorf("after release: batch %q, want %q", got, want)
	}
	if got, want := backendSet(dp.Datapath, fe), "10.1.0.2/1/1"; got != want {
		t.Errorf("after release: programmed %q, want %q", got, want)
	}
}

// upstream hands in one service per Flush, and counts its flushes.
type upstream struct {
	r       *Reconciler
	ready   chan struct{}
	mu      sync.Mutex
	pending []datapath.Service
	flushes int
}

func (u *upstream) Ready() <-chan struct{} { return u.ready }

func (u *upstream) Flush() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.flushes++
	for _, s := range u.pending {
		u.r.UpsertService(s)
	}
	u.pending = nil
}

func (u *upstream) add(s datapath.Service) {
	u.mu.Lock()
	u.pending = append(u.pending, s)
	u.mu.Unlock()
	select {
	case u.ready <- struct{}{}:
	default:
	}
}

// TestRunPullsUpstream: Run flushes the upstream when it is ready, and what
// it hands in is applied in the same batch.
func TestRunPullsUpstream(t *testing.T) {
	dp := &countingBatches{Datapath: memory.New()}
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	u := &upstream{r: r, ready: make(chan struct{}, 1)}
	r.Pull(u)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	u.add(datapath.Service{Frontend: fe, Backends: []datapath.Backend{{Addr: netip.MustParseAddrPort("10.1.0.1:8080"), ClusterID: 1, Weight: 1}}})
	testwait.Until(t, 10*time.Second, "the upstream's service programmed", func() (bool, string) {
		_, ok := dp.Service(fe)
		return ok, "absent"
	})
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.batches != 1 {
		t.Errorf("%d batches applied, want 1 (the upstream's changes in the batch of its own wake-up)", dp.batches)
	}
}

type countingBatches struct {
	*memory.Datapath
	mu      sync.Mutex
	batches int
}

func (c *countingBatches) Apply(ctx context.Context, b datapath.Batch) error {
	c.mu.Lock()
	c.batches++
	c.mu.Unlock()
	return c.Datapath.Apply(ctx, b)
}
