package mesh

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// TestRenderRefusedClaims: refused claims and conflicts between remotes
// show with their counts and both claimants; none, no section.
func TestRenderRefusedClaims(t *testing.T) {
	tests := []struct {
		name   string
		remote meshstatus.Remote
		want   []string
		absent []string
	}{
		{name: "none", remote: meshstatus.Remote{Name: "c2", Ready: true}, absent: []string{"Refused remote claims"}},
		{name: "refused and conflicting", remote: meshstatus.Remote{Name: "c2", Ready: true,
			Refused:   map[string]int{"over-broad prefix": 1, "claimed by another remote": 2},
			Conflicts: []meshstatus.Conflict{{Kind: "ipcache", Prefix: "10.9.0.5/32", Claimants: []string{"c2", "c3"}}}},
			want: []string{"Refused remote claims", "over-broad prefix", "claimed by another remote", "ipcache 10.9.0.5/32", "conflict between c2, c3"}},
		{name: "programmed: the sync's time", remote: meshstatus.Remote{Name: "c2", Ready: true, ProgrammedAt: time.Date(2026, 12, 6, 10, 0, 2, 0, time.UTC), SyncSeconds: 1.951},
			want: []string{"SYNC TOOK", "1.95s"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := MeshStatus{Clusters: []ClusterStatus{{Context: "ctx1", Enabled: true, Cluster: "c1", ClusterID: 1, Remotes: []string{"c2"},
				Agents: []meshstatus.AgentReport{{Cluster: "c1", Node: "n1", Remotes: []meshstatus.Remote{tc.remote}}}}}}
			var out bytes.Buffer
			if err := RenderStatus(&out, st); err != nil {
				t.Fatal(err)
			}
			checkOutput(t, out.String(), tc.want, tc.absent)
		})
	}
}

// TestRenderKVStoreMesh: the apiserver's mirror of each remote shows with
// its state and entries; without a kvstoremesh, no section.
func TestRenderKVStoreMesh(t *testing.T) {
	tests := []struct {
		name   string
		cached []meshstatus.CachedRemote
		want   []string
		absent []string
	}{
		{name: "off", absent: []string{"KVStoreMesh of", "(kvstoremesh)"}},
		{name: "synced and down", cached: []meshstatus.CachedRemote{
			{Name: "c2", ClusterID: 2, Connected: true, Synced: true, Served: true, Entries: map[string]int{meshstatus.KindNodes: 3, meshstatus.KindIPCache: 40}},
			{Name: "c3", ClusterID: 3, Served: true, Entries: map[string]int{meshstatus.KindNodes: 2}, LastError: "dial tcp: connection refused"},
		}, want: []string{"KVStoreMesh of c1:", "c2      2   synced", "40", "c3      3   disconnected, serving the last state", "dial tcp: connection refused", "ready (kvstoremesh)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := MeshStatus{Clusters: []ClusterStatus{{Context: "ctx1", Enabled: true, Cluster: "c1", ClusterID: 1,
				APIServer: &meshstatus.APIServerReport{Cluster: "c1", ClusterID: 1, Ready: true, KVStoreMesh: tc.cached},
				Agents:    []meshstatus.AgentReport{{Cluster: "c1", Node: "n1", Remotes: []meshstatus.Remote{{Name: "c2", ClusterID: 2, Ready: true, Cached: tc.cached != nil}}}}}}}
			var out bytes.Buffer
			if err := RenderStatus(&out, st); err != nil {
				t.Fatal(err)
			}
			checkOutput(t, out.String(), tc.want, tc.absent)
		})
	}
}

// TestRenderWorldIngress: the agents' world decision shows once per
// distinct state with how many agents hold it; agents that do not report
// one (older versions) add no line.
func TestRenderWorldIngress(t *testing.T) {
	off := "not decided beside the primary CNI: --cluster-cidrs is not set"
	on := "decided outside the cluster ranges (10.244.0.0/16 and the nodes' pod CIDRs)"
	tests := []struct {
		name   string
		states []string
		want   []string
		absent []string
	}{
		{name: "not reported", states: []string{"", ""}, absent: []string{"World ingress"}},
		{name: "one state", states: []string{off, off}, want: []string{"World ingress: " + off + " (2 of 2 agents)"}},
		{name: "agents disagree", states: []string{on, off, on}, want: []string{"World ingress: " + on + " (2 of 3 agents)", "World ingress: " + off + " (1 of 3 agents)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var agents []meshstatus.AgentReport
			for i, s := range tc.states {
				agents = append(agents, meshstatus.AgentReport{Cluster: "c1", Node: "n" + string(rune('1'+i)), WorldIngress: s})
			}
			st := MeshStatus{Clusters: []ClusterStatus{{Context: "ctx1", Enabled: true, Cluster: "c1", ClusterID: 1, Agents: agents}}}
			var out bytes.Buffer
			if err := RenderStatus(&out, st); err != nil {
				t.Fatal(err)
			}
			checkOutput(t, out.String(), tc.want, tc.absent)
		})
	}
}

// checkOutput fails t for every want that out lacks and every absent it has.
func checkOutput(t *testing.T, out string, want, absent []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	for _, w := range absent {
		if strings.Contains(out, w) {
			t.Errorf("output has %q:\n%s", w, out)
		}
	}
}
