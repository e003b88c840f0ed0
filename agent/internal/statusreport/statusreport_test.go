package statusreport

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

func TestBuild(t *testing.T) {
	now := time.Date(2026, 11, 23, 17, 0, 0, 0, time.UTC)
	r := Build("c1", "n1", []remotecluster.Status{
		{Name: "c2", ID: 2, Connected: true, Ready: true, Reconnects: 3, LastError: "old", LastChange: now,
			ProgrammedAt: now.Add(1951234 * time.Microsecond), SyncTook: 1951234 * time.Microsecond,
			Kinds: []remotecluster.KindStatus{
				{Kind: "nodes", Synced: true, Entries: 4, Invalid: 1},
				{Kind: "identities", Synced: true, Entries: 2},
				{Kind: "ipcache", Synced: true, Entries: 9, Invalid: 2},
				{Kind: "services", Synced: false},
			},
			Refused:   []remotecluster.RefusedClaims{{Reason: "claimed by another remote", Count: 2}, {Reason: "over-broad prefix", Count: 1}},
			Conflicts: []remotecluster.Conflict{{Kind: "tunnel", Prefix: "10.9.0.0/24", Claimants: []string{"c2", "c4"}}}},
		{Name: "c3", RefusedReason: "cluster ID conflict"},
		{Name: "c4", Connected: true, WaitingForCanary: true},
		{Name: "c5", ID: 5, Connected: true, Ready: true, PodCIDROverlap: "pod CIDR overlaps: 10.1.4.0/24 of node n1 overlaps 10.1.0.0/16"},
	})
	if r.Cluster != "c1" || r.Node != "n1" || len(r.Remotes) != 4 {
		t.Fatalf("report %+v", r)
	}
	c2 := r.Remotes[0]
	if c2.ClusterID != 2 || !c2.Connected || !c2.Ready || c2.Reconnects != 3 || c2.Invalid != 3 || !c2.LastChange.Equal(now) ||
		c2.Entries[meshstatus.KindIPCache] != 9 || c2.Entries[meshstatus.KindNodes] != 4 ||
		!c2.Synced[meshstatus.KindIPCache] || c2.Synced[meshstatus.KindServices] || len(c2.Synced) != 4 {
		t.Fatalf("c2 %+v", c2)
	}
	if !c2.ProgrammedAt.Equal(now.Add(1951*time.Millisecond)) || c2.SyncSeconds != 1.951 {
		t.Fatalf("c2 programmed at %v after %vs, want %v after 1.951s", c2.ProgrammedAt, c2.SyncSeconds, now.Add(1951*time.Millisecond))
	}
	if c4 := r.Remotes[2]; !c4.ProgrammedAt.IsZero() || c4.SyncSeconds != 0 {
		t.Fatalf("c4, never programmed: %+v", c4)
	}
	if c2.Refused["claimed by another remote"] != 2 || c2.Refused["over-broad prefix"] != 1 || len(c2.Conflicts) != 1 ||
		!slices.Equal(c2.Conflicts[0].Claimants, []string{"c2", "c4"}) || c2.Conflicts[0].Prefix != "10.9.0.0/24" {
		t.Fatalf("c2 claims %+v %+v", c2.Refused, c2.Conflicts)
	}
	if c3 := r.Remotes[1]; c3.Ready || c3.LastError != "refused: cluster ID conflict" || !c3.LastChange.IsZero() {
		t.Fatalf("c3 %+v", c3)
	}
	if c4 := r.Remotes[2]; c4.Ready || !c4.WaitingForCanary {
		t.Fatalf("c4 %+v", c4)
	}
	if c5 := r.Remotes[3]; c5.Ready || c5.LastError != "refused: pod CIDR overlaps: 10.1.4.0/24 of node n1 overlaps 10.1.0.0/16" {
		t.Fatalf("c5 with overlapping pod CIDRs %+v, want not ready with the reason", c5)
	}
}

// source is a Source whose state the test sets; it counts the polls.
type source struct {
	mu    sync.Mutex
	st    []remotecluster.Status
	polls int
}

func (s *source) Status() []remotecluster.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.polls++
	out := slices.Clone(s.st)
	for i := range out {
		out[i].Kinds = slices.Clone(out[i].Kinds)
	}
	return out
}

func (s *source) set(f func(*remotecluster.Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.st[0])
}

func (s *source) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.polls
}

func TestPublisherWritesOnChangeAndLimitsCountChurn(t *testing.T) {
	src := &source{st: []remotecluster.Status{{Name: "c2", ID: 2, Connected: true,
		Kinds: []remotecluster.KindStatus{{Kind: "nodes", Synced: true, Entries: 1}}}}}
	cs := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	p := New(Config{Namespace: "kube-system", Cluster: "c1", Node: "n1", PollInterval: time.Second, CountBudget: 10, Nodes: func() int { return 100 }, Resync: 30 * time.Second},
		src, cs.CoreV1(), slog.New(slog.DiscardHandler), clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	waitPolls := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for src.count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("poll %d did not happen", n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// step advances the clock by d and returns once the poll after the
	// next one has started, so that the next one has finished.
	polls := 1
	step := func(d time.Duration) {
		t.Helper()
		clk.Step(d)
		polls++
		waitPolls(polls)
	}
	writes := func() int {
		n := 0
		for _, a := range cs.Actions() {
			if a.GetResource().Resource == "configmaps" && (a.GetVerb() == "create" || a.GetVerb() == "update") {
				n++
			}
		}
		return n
	}
	report := func() meshstatus.Remote {
		t.Helper()
		reps, err := meshstatus.List(context.Background(), cs.CoreV1(), "kube-system")
		if err != nil || len(reps.Agents) != 1 || len(reps.Agents[0].Remotes) != 1 {
			t.Fatalf("reports %+v, %v", reps, err)
		}
		return reps.Agents[0].Remotes[0]
	}

	waitPolls(1)
	step(time.Second)
	if w, r := writes(), report(); w != 1 || r.Ready || r.Entries["nodes"] != 1 {
		t.Fatalf("after start: %d writes, %+v", w, r)
	}

	src.set(func(s *remotecluster.Status) { s.Kinds[0].Entries = 2 }) // a count only: waits
	step(time.Second)
	step(time.Second)
	if w := writes(); w != 1 {
		t.Fatalf("a count change was written after 2s: %d writes", w)
	}

	src.set(func(s *remotecluster.Status) { s.Ready = true }) // significant: at once
	step(time.Second)
	step(time.Second)
	if w, r := writes(), report(); w != 2 || !r.Ready || r.Entries["nodes"] != 2 {
		t.Fatalf("after ready: %d writes, %+v", w, r)
	}

	src.set(func(s *remotecluster.Status) { s.Kinds[0].Entries = 3 })
	step(10 * time.Second)
	step(time.Second)
	if w, r := writes(), report(); w != 3 || r.Entries["nodes"] != 3 {
		t.Fatalf("after the count interval: %d writes, %+v", w, r)
	}
}

func TestCountIntervalScalesWithTheCluster(t *testing.T) {
	for _, tc := range []struct {
		nodes int
		nilFn bool
		want  time.Duration
	}{
		{nilFn: true, want: time.Second}, // unknown size: one node
		{nodes: 0, want: time.Second},    // not listed yet
		{nodes: 6, want: time.Second},    // 0.6s, raised to the poll interval
		{nodes: 25, want: 2500 * time.Millisecond},
		{nodes: 100, want: 10 * time.Second},
		{nodes: 5000, want: 30 * time.Second}, // 500s, capped at the resync
	} {
		cfg := Config{Namespace: "x", CountBudget: 10, Resync: 30 * time.Second}
		if !tc.nilFn {
			cfg.Nodes = func() int { return tc.nodes }
		}
		p := New(cfg, &source{}, fake.NewClientset().CoreV1(), slog.New(slog.DiscardHandler), clocktesting.NewFakeClock(time.Unix(0, 0)))
		if got := p.countInterval(); got != tc.want {
			t.Errorf("%d nodes (nil %v): interval %v, want %v", tc.nodes, tc.nilFn, got, tc.want)
		}
	}
}
