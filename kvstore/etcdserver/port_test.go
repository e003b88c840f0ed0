package etcdserver

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// A chosen port that another process takes before etcd listens on it is
// chosen again; a port the caller gave is not.
func TestStartChoosesAgainWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	var calls atomic.Int32
	freePort = func(host string) (int, error) {
		if calls.Add(1) == 1 {
			return takenPort, nil
		}
		return FreePort(host)
	}
	t.Cleanup(func() { freePort = FreePort })

	s, err := Start(context.Background(), Config{ClusterName: "c1", DataDir: filepath.Join(t.TempDir(), "etcd"), UnsafeNoFsync: true}, TestLogger())
	if err != nil {
		t.Fatalf("start with a taken port first: %v", err)
	}
	defer s.Stop()
	if calls.Load() < 3 {
		t.Fatalf("%d ports chosen, want the taken one and two more", calls.Load())
	}

	_, err = Start(context.Background(), Config{ClusterName: "c1", DataDir: filepath.Join(t.TempDir(), "etcd"), UnsafeNoFsync: true,
		ClientURL: "https://" + taken.Addr().String()}, TestLogger())
	if err == nil || !isAddrInUse(err) {
		t.Fatalf("start on a given, taken port: %v, want address in use", err)
	}
}
