package agentproc

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// TestProc runs the agent binary (memory datapath: no root) against a real
// kube-apiserver and no remote, and reads it the way the benchmarks do.
func TestProc(t *testing.T) {
	cp := kubetest.StartForTest(t, kubetest.Config{Name: "c1"})
	bin := Bin(t, t.TempDir())
	tests := []struct {
		name     string
		datapath string
		check    func(t *testing.T, p *Proc)
	}{
		{"serves status, readiness, memory and CPU", "memory", func(t *testing.T, p *Proc) {
			testwait.Until(t, time.Minute, "agent ready", func() (bool, string) {
				if err := p.Failed(); err != nil {
					t.Fatal(err)
				}
				return p.Ready()
			})
			// The own cluster's sync is released once: the memory of it
			// goes back to the OS after the next flush.
			testwait.Until(t, time.Minute, "trim after the own cluster's sync", func() (bool, string) {
				st, err := p.Status(context.Background())
				if err != nil {
					return false, err.Error()
				}
				if st.GetClusterName() != "c1" || st.GetNodeName() != "n1" {
					t.Fatalf("status of %q/%q, want c1/n1", st.GetClusterName(), st.GetNodeName())
				}
				return st.GetDatapathTrims() > 0, st.String()
			})
			if rss, heap := p.Memory(t, ""); rss < 1<<20 || heap < 1<<20 || heap > rss {
				t.Errorf("RSS %d, heap %d bytes", rss, heap)
			}
			if cpu := p.CPU(t); cpu <= 0 {
				t.Errorf("CPU %v", cpu)
			}
			p.Stop(t)
			if p.Failed() == nil {
				t.Error("Failed is nil after Stop")
			}
			if _, err := os.Stat(p.PinDir); !os.IsNotExist(err) {
				t.Errorf("pin directory left: %v", err)
			}
		}},
		{"an unusable flag: exits and says why", "nonsense", func(t *testing.T, p *Proc) {
			var err error
			testwait.Until(t, time.Minute, "agent exit", func() (bool, string) {
				err = p.Failed()
				return err != nil, "running"
			})
			if !strings.Contains(err.Error(), `--datapath "nonsense"`) {
				t.Errorf("Failed() = %v, want the log's reason", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Start(t, Options{Bin: bin, Kubeconfig: cp.Kubeconfig(), RemotesDir: t.TempDir(), Datapath: tc.datapath, Name: "agentproc-test"})
			tc.check(t, p)
		})
	}
}

func TestEnviron(t *testing.T) {
	t.Setenv("GOMAXPROCS", "7")
	tests := []struct {
		name string
		n    int
		want []string // the GOMAXPROCS entries
	}{
		{"the runtime's default: the benchmark's value is not passed on", 0, nil},
		{"set", 1, []string{"GOMAXPROCS=1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, kv := range environ(tc.n) {
				if strings.HasPrefix(kv, "GOMAXPROCS=") {
					got = append(got, kv)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("GOMAXPROCS entries %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSynced(t *testing.T) {
	c2 := remotedata.Set{Cluster: "c2", ID: 2, Nodes: 2, IPs: 3, Identities: 1}
	c3 := remotedata.Set{Cluster: "c3", ID: 3}
	remote := func(name string, ready bool, nodes, ips uint64) *agentv1.RemoteCluster {
		return &agentv1.RemoteCluster{Name: name, Ready: ready, Kinds: []*agentv1.KindStatus{
			{Kind: "nodes", Entries: nodes}, {Kind: "ipcache", Entries: ips}, {Kind: "identities", Entries: min(nodes, 1)}, {Kind: "services"}}}
	}
	tests := []struct {
		name    string
		remotes []*agentv1.RemoteCluster
		want    bool
	}{
		{"every set ready with all its entries", []*agentv1.RemoteCluster{remote("c2", true, 2, 3), remote("c3", true, 0, 0)}, true},
		{"one not ready", []*agentv1.RemoteCluster{remote("c2", false, 2, 3), remote("c3", true, 0, 0)}, false},
		{"ready with entries missing", []*agentv1.RemoteCluster{remote("c2", true, 2, 2), remote("c3", true, 0, 0)}, false},
		{"a remote missing", []*agentv1.RemoteCluster{remote("c2", true, 2, 3)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, why := Synced(&agentv1.GetStatusResponse{RemoteClusters: tc.remotes}, []remotedata.Set{c2, c3}); got != tc.want {
				t.Errorf("Synced = %v (%s), want %v", got, why, tc.want)
			}
		})
	}
}
