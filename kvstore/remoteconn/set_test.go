package remoteconn

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// nopMember is a Member that reads nothing.
type nopMember struct{}

func (nopMember) Connected(Session) ([]Reader, error) { return nil, nil }
func (nopMember) Synced(Session)                      {}
func (nopMember) Drain()                              {}
func (nopMember) Removed(uint32)                      {}

// TestSetReserve: the cluster ID rule of CheckID applied to the set's
// remotes; a remote that changes its ID frees the old one.
func TestSetReserve(t *testing.T) {
	const ownID = 1
	s := NewSet(SetConfig{Own: Own{Name: "own", ID: ownID}}, func(string, *slog.Logger) nopMember { return nopMember{} }, slog.Default(), clock.RealClock{})
	a, b := &slot[nopMember]{name: "a"}, &slot[nopMember]{name: "b"}
	s.slots["a"], s.slots["b"] = a, b
	tests := []struct {
		name string
		r    *slot[nopMember]
		id   uint32
		want error
	}{
		{"zero", a, 0, ErrClusterConfig},
		{"own", a, ownID, ErrClusterIDConflict},
		{"free", a, 5, nil},
		{"again by the same remote", a, 5, nil},
		{"taken by another", b, 5, ErrClusterIDConflict},
		{"remote changes its ID", a, 6, nil},
		{"old ID freed", b, 5, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.reserve(tt.r, tt.id); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if got := s.ClusterNames(); len(got) != 2 || got[6] != "a" || got[5] != "b" {
		t.Fatalf("cluster names %v, want 6:a 5:b", got)
	}
}

// TestReaderConfig: a session reads the remote's own prefix, or the cache
// prefix when its cluster config says cached, and waits for that prefix's
// canary only when the remote advertises syncedCanaries.
func TestReaderConfig(t *testing.T) {
	rem := wire.Remote{Name: "c2", ID: 2}
	for _, tc := range []struct {
		name   string
		caps   wire.Capabilities
		prefix string
		synced string
	}{
		{"own etcd with canaries", wire.Capabilities{SyncedCanaries: true}, wire.WatchPrefix(wire.KindNodes, "c2", false), wire.WatchSyncedKey(wire.KindNodes, "c2", false)},
		{"own etcd without canaries", wire.Capabilities{}, wire.WatchPrefix(wire.KindNodes, "c2", false), ""},
		{"kvstoremesh cache", wire.Capabilities{SyncedCanaries: true, Cached: true}, wire.WatchPrefix(wire.KindNodes, "c2", true), wire.WatchSyncedKey(wire.KindNodes, "c2", true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Session{Config: wire.ClusterConfig{ID: 2, Capabilities: tc.caps}, Remote: rem}
			got := s.ReaderConfig(wire.KindNodes, "nodes", 7)
			want := watchstore.Config{Prefix: tc.prefix, SyncedKey: tc.synced, Name: "nodes", Cluster: "c2", MaxEntries: 7}
			if got != want {
				t.Fatalf("%+v, want %+v", got, want)
			}
			if tc.caps.Cached == (got.Prefix == wire.WatchPrefix(wire.KindNodes, "c2", false)) {
				t.Fatalf("prefix %q does not follow cached=%v", got.Prefix, tc.caps.Cached)
			}
		})
	}
}

// TestRefusalReason: the refusal reason follows each attempt's outcome,
// except an entry-limit refusal, which stays across attempts that end
// before a complete listing (connected or not) until a session lists
// within the limit.
func TestRefusalReason(t *testing.T) {
	s := NewSet(SetConfig{Own: Own{Name: "own", ID: 1}}, func(string, *slog.Logger) nopMember { return nopMember{} }, slog.Default(), clock.RealClock{})
	r := &slot[nopMember]{name: "a"}
	overLimit := fmt.Errorf("watch ipcache: %w: 5 > 3 (--remote-max-entries)", watchstore.ErrTooManyEntries)
	conflict := fmt.Errorf("%w: 5 is used by connected cluster %q", ErrClusterIDConflict, "b")
	unreachable := errors.New("dial tcp: connection refused")
	steps := []struct {
		name string
		do   func()
		want error // nil: no reason
	}{
		{"cluster ID conflict", func() { s.settle(r, Refusal(conflict)) }, conflict},
		{"connected: the conflict is over", func() { r.update(func(*State) { r.passedLocked(false) }) }, nil},
		{"over the limit", func() { s.refuse(r, overLimit) }, overLimit},
		{"session ends with the limit's error", func() { s.settle(r, Refusal(overLimit)) }, overLimit},
		{"next attempt unreachable", func() { s.settle(r, Refusal(unreachable)) }, overLimit},
		{"next attempt connected", func() { r.update(func(*State) { r.passedLocked(false) }) }, overLimit},
		{"listed within the limit", func() { r.update(func(*State) { r.passedLocked(true) }) }, nil},
		{"over the limit again", func() { s.refuse(r, overLimit) }, overLimit},
		{"a conflict replaces it", func() { s.settle(r, Refusal(conflict)) }, conflict},
		{"unreachable ends the conflict's reason", func() { s.settle(r, Refusal(unreachable)) }, nil},
		{"over the limit once more", func() { s.refuse(r, overLimit) }, overLimit},
		{"config file changed", func() { s.refuse(r, nil) }, nil},
		{"after it, unreachable", func() { s.settle(r, Refusal(unreachable)) }, nil},
	}
	for _, st := range steps {
		st.do()
		want := ""
		if st.want != nil {
			want = st.want.Error()
		}
		r.mu.Lock()
		got := r.st.RefusedReason
		r.mu.Unlock()
		if got != want {
			t.Fatalf("%s: reason %q, want %q", st.name, got, want)
		}
	}
}
