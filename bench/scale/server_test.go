package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/kvstoremesh"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
)

// serverEnv makes the test binary run as the fan-out's server side: the
// remote etcds, the local etcd and the kvstoremesh in a process of their
// own, so that the watchers' goroutines do not share a Go scheduler with
// them.
const serverEnv = "CLUSTERMESH_BENCH_SCALE_SERVER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(serverEnv); dir != "" {
		if err := runServer(dir); err != nil {
			fmt.Fprintln(os.Stderr, "scale server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serverFiles are the files the server writes under its directory: the
// remotes' admin configs (for the churn), the local reader config (for the
// watchers) and the kvstoremesh's config directory.
func adminFile(dir, cluster string) string { return filepath.Join(dir, "admin", cluster) }
func readerFile(dir string) string         { return filepath.Join(dir, "reader") }

func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// runServer starts one etcd per set of the fan-out mesh (BENCH_FANOUT_REMOTES
// clusters), writes their data, starts the local etcd and a kvstoremesh
// mirroring them, prints "ready" once every remote is mirrored and serves
// until stdin closes.
func runServer(dir string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mesh := fanoutMesh(envIntOr("BENCH_FANOUT_REMOTES", 4))
	var servers []*etcdserver.Server
	defer func() {
		for _, s := range servers {
			s.Stop()
		}
	}()
	start := func(cluster string) (*etcdserver.Server, error) {
		s, err := etcdserver.Start(ctx, etcdserver.Config{ClusterName: cluster, DataDir: filepath.Join(dir, "etcd-"+cluster), UnsafeNoFsync: true}, log)
		if err == nil {
			servers = append(servers, s)
		}
		return s, err
	}
	meshDir := filepath.Join(dir, "remotes")
	for _, s := range mesh.Sets() {
		srv, err := start(s.Cluster)
		if err != nil {
			return err
		}
		if err := writeJSON(adminFile(dir, s.Cluster), srv.AdminConfig()); err != nil {
			return err
		}
		c, err := kvstore.New(ctx, srv.AdminConfig(), log)
		if err != nil {
			return err
		}
		err = s.Write(ctx, c.Etcd())
		c.Close()
		if err != nil {
			return err
		}
		rc, err := srv.EnsureRemoteUser(ctx, "c1")
		if err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(meshDir, s.Cluster), rc); err != nil {
			return err
		}
	}
	local, err := start("c1")
	if err != nil {
		return err
	}
	reader, err := local.EnsureLocalReaderUser(ctx)
	if err != nil {
		return err
	}
	if err := writeJSON(readerFile(dir), reader); err != nil {
		return err
	}
	admin, err := kvstore.New(ctx, local.AdminConfig(), log)
	if err != nil {
		return err
	}
	defer admin.Close()
	mcfg := kvstoremesh.DefaultConfig()
	mcfg.Dir, mcfg.Own = meshDir, remoteconn.Own{Name: "c1", ID: 1, MaxConnectedClusters: 255}
	m := kvstoremesh.New(mcfg, admin, log, clock.RealClock{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = m.Run(ctx) })
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		synced := 0
		for _, s := range m.Status() {
			if s.Synced {
				synced++
			}
		}
		if synced == mesh.Clusters {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kvstoremesh: %d of %d remotes synced after 5 minutes", synced, mesh.Clusters)
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// fanoutMesh is the fan-out's remotes: n clusters of the scale data set's
// per-cluster size, each in its own etcd (state layout).
func fanoutMesh(n int) remotedata.Mesh {
	m := remotedata.CiliumScale(false)
	m.Clusters = n
	return m
}

// envIntOr is envInt without a benchmark: def when unset or invalid.
func envIntOr(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err != nil {
		return def
	}
	return n
}

// startServer runs the fan-out's server side as a child process (this test
// binary) and returns its directory once it is ready; it stops when the
// benchmark ends.
func startServer(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "cm-bench-scale-")
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serverEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
		os.RemoveAll(dir)
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		b.Fatalf("scale server: %q, %v", line, err)
	}
	return dir
}
