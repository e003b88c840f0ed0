package remotecluster

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
)

// TestSecretMountSwap lays the directory out as a Kubernetes Secret volume
// (files are symlinks through "..data", which is swapped atomically on update)
// and checks that additions, updates and removals are picked up.
func TestSecretMountSwap(t *testing.T) {
	dir := t.TempDir()
	writeGen := func(gen string, files map[string]string) {
		d := filepath.Join(dir, "..2026_"+gen)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for n, c := range files {
			if err := os.WriteFile(filepath.Join(d, n), []byte(c), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink("..2026_"+gen, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		for n := range files {
			_ = os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n))
		}
	}
	writeGen("a", map[string]string{"c2": "endpoints: [https://127.0.0.1:1]\n"})

	dp := memory.New()
	rec := dpsync.New(dpsync.Config{ClusterID: ownID}, dp, log, clock.RealClock{})
	cfg := testConfig(dir, "")
	cfg.BackoffMin, cfg.BackoffMax = time.Second, time.Second // few attempts while the test runs
	m := New(cfg, rec, servicemerge.New(servicemerge.Config{ClusterID: ownID}, rec), log, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = m.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	waitFor := func(what string, cond func([]Status) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond(m.Status()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %+v", what, m.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("c2 added", func(s []Status) bool { return len(s) == 1 && s[0].Name == "c2" && s[0].Failures > 0 })
	before := m.Status()[0].Reconnects

	// As `clustermesh connect` writes it: each config with its certificates.
	writeGen("b", map[string]string{"c2": "endpoints: [https://127.0.0.1:2]\n", "c3": "endpoints: [https://127.0.0.1:3]\n",
		"c3.etcd-client-ca.crt": "ca", "c3.etcd-client.crt": "cert", "c3.etcd-client.key": "key"})
	waitFor("c2 changed, c3 added", func(s []Status) bool {
		return len(s) == 2 && s[0].Name == "c2" && s[1].Name == "c3" && s[0].Reconnects > before
	})

	// The Secret loses c2: the symlink dangles, then is removed.
	writeGen("c", map[string]string{"c3": "endpoints: [https://127.0.0.1:3]\n"})
	waitFor("c2 removed", func(s []Status) bool { return len(s) == 1 && s[0].Name == "c3" })
	if err := os.Remove(filepath.Join(dir, "c2")); err != nil {
		t.Fatal(err)
	}
}

// fakeStore is a kind store with fixed stats.
type fakeStore struct{ st watchstore.Stats }

func (f fakeStore) RunOn(context.Context, *kvstore.Client) error { return nil }
func (f fakeStore) Drain()                                       {}
func (f fakeStore) Stats() watchstore.Stats                      { return f.st }

func TestCollector(t *testing.T) {
	st := Status{Name: "c2", Ready: true, LastHeartbeat: time.Now().Add(-time.Minute),
		Kinds: []KindStatus{kindStatus(kindIPCache, fakeStore{watchstore.Stats{Entries: 7, Synced: true}})}}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{status: func() []Status { return []Status{st} }, now: time.Now})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			v := mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
			key := mf.GetName()
			for _, l := range mt.GetLabel() {
				if l.GetName() == "kind" {
					key += "/" + l.GetValue()
				}
			}
			got[key] = v
		}
	}
	if got["clustermesh_agent_remote_cluster_ready"] != 1 || got["clustermesh_agent_remote_entries/ipcache"] != 7 ||
		got["clustermesh_agent_remote_heartbeat_lag_seconds"] < 59 {
		t.Fatalf("metrics %v", got)
	}
}
