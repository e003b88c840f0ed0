package statusreport

import (
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

func TestBuild(t *testing.T) {
	now := time.Date(2026, 11, 23, 17, 0, 0, 0, time.UTC)
	r := Build("c1", "n1", []remotecluster.Status{
		{Name: "c2", ID: 2, Connected: true, Ready: true, Reconnects: 3, LastError: "old", LastChange: now,
			Kinds: []remotecluster.KindStatus{
				{Kind: "nodes", Synced: true, Entries: 4, Invalid: 1},
				{Kind: "identities", Synced: true, Entries: 2},
				{Kind: "ipcache", Synced: true, Entries: 9, Invalid: 2},
				{Kind: "services", Synced: false},
			}},
		{Name: "c3", RefusedReason: "cluster ID conflict"},
	})
	if r.Cluster != "c1" || r.Node != "n1" || len(r.Remotes) != 2 {
		t.Fatalf("report %+v", r)
	}
	c2 := r.Remotes[0]
	if c2.ClusterID != 2 || !c2.Connected || !c2.Ready || c2.Reconnects != 3 || c2.Invalid != 3 || !c2.LastChange.Equal(now) ||
		c2.Entries[meshstatus.KindIPCache] != 9 || c2.Entries[meshstatus.KindNodes] != 4 ||
		!c2.Synced[meshstatus.KindIPCache] || c2.Synced[meshstatus.KindServices] || len(c2.Synced) != 4 {
		t.Fatalf("c2 %+v", c2)
	}
	if c3 := r.Remotes[1]; c3.Ready || c3.LastError != "refused: cluster ID conflict" || !c3.LastChange.IsZero() {
		t.Fatalf("c3 %+v", c3)
	}
}
