package remoteconn

import (
	"errors"
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
