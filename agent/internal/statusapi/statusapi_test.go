package statusapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakes struct{}

func (fakes) Status() []remotecluster.Status {
	return []remotecluster.Status{{Name: "c2", ID: 2, Connected: true, Ready: true, LastChange: time.Now(),
		ProgrammedAt: time.Date(2026, 12, 6, 10, 0, 2, 0, time.UTC), SyncTook: 1950 * time.Millisecond,
		Kinds:     []remotecluster.KindStatus{{Kind: "ipcache", Synced: true, Entries: 5, Invalid: 1}},
		Refused:   []remotecluster.RefusedClaims{{Reason: string(dpsync.ReasonConflict), Count: 1, Examples: []string{"ipcache 10.9.0.5/32"}}},
		Conflicts: []remotecluster.Conflict{{Kind: "ipcache", Prefix: "10.9.0.5/32", Claimants: []string{"c2", "c4"}}}},
		{Name: "c3", ID: 0, RefusedReason: "cluster ID conflict: 2 is used by connected cluster \"c2\""},
		{Name: "c4", ID: 4, Connected: true, WaitingForCanary: true}}
}
func (fakes) ClusterNames() map[uint32]string { return map[uint32]string{1: "c1", 2: "c2"} }
func (fakes) Snapshot() []servicemerge.Snapshot {
	return []servicemerge.Snapshot{{Name: servicemerge.Name{Namespace: "shop", Name: "web"}, Services: []datapath.Service{{
		Frontend: datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP},
		Backends: []datapath.Backend{{Addr: netip.MustParseAddrPort("10.2.0.1:8080"), ClusterID: 2, Weight: 1}},
	}}}}
}
func (fakes) ProxyOnly() []servicemerge.Kept {
	return []servicemerge.Kept{{Name: servicemerge.Name{Namespace: "shop", Name: "sticky"}, Reason: "sessionAffinity ClientIP"}}
}
func (fakes) Tunnels() []datapath.TunnelEntry {
	return []datapath.TunnelEntry{{CIDR: netip.MustParsePrefix("10.2.1.0/24"), NodeIP: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}}
}
func (fakes) IPCache() []datapath.IPCacheEntry {
	return []datapath.IPCacheEntry{{Prefix: netip.MustParsePrefix("10.2.1.5/32"), Identity: 2<<16 | 300, TunnelEndpoint: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}}
}
func (fakes) Holding() []uint32   { return []uint32{3} }
func (fakes) Stats() dpsync.Stats { return dpsync.Stats{Batches: 4, Trims: 2} }

func TestServeAndPrint(t *testing.T) {
	dir, err := os.MkdirTemp("", "cmst")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	s := New(Config{Socket: sock, ClusterName: "c1", ClusterID: 1, NodeName: "n1"}, fakes{}, fakes{}, fakes{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := Fetch(ctx, sock, true)
		if err == nil {
			if c2 := r.GetRemoteClusters()[0]; c2.GetSyncDuration().AsDuration() != 1950*time.Millisecond || c2.GetProgrammedAt().AsTime().Second() != 2 {
				t.Fatalf("c2 programmed at %v after %v; want 10:00:02 after 1.95s", c2.GetProgrammedAt(), c2.GetSyncDuration())
			}
			if r.GetDatapathBatches() != 4 || r.GetDatapathTrims() != 2 {
				t.Fatalf("datapath batches %d, trims %d; want the reconciler's 4, 2", r.GetDatapathBatches(), r.GetDatapathTrims())
			}
			var tbl, js bytes.Buffer
			if err := PrintTable(&tbl, r); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"c2", "cluster ID conflict", "10.96.0.10:80/TCP", "10.2.0.1:8080(c2:1)", "10.2.1.0/24", "131372",
				"claimed by another remote", "ipcache 10.9.0.5/32", "c2, c4", waitingForCanary, "2026-12-06T10:00:02Z (1.95s)",
				"shop/sticky", "sessionAffinity ClientIP (egress decided against the address)"} {
				if !strings.Contains(tbl.String(), want) {
					t.Fatalf("table lacks %q:\n%s", want, tbl.String())
				}
			}
			if err := PrintJSON(&js, r); err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			if err := json.Unmarshal(js.Bytes(), &v); err != nil || v["clusterName"] != "c1" {
				t.Fatalf("json %v: %s", err, js.String())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
