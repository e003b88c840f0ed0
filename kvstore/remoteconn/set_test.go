package remoteconn

import (
	"errors"
	"log/slog"
	"testing"

	"k8s.io/utils/clock"
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
