package remotecluster

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// TestSteadyChangesApplyInline: a remote's listings (the first, and the
// one after a reconnect) and its withdrawal reach the datapath through the
// reconciler's worker, in batches; a change after its session synced is
// applied on the watch goroutine itself (dpsync.Reconciler.Steady).
func TestSteadyChangesApplyInline(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	for i := range 2 {
		c2.node(i)
	}
	const listed = 100
	for i := range listed {
		c2.ipcache(i)
	}
	c2.canaries()
	a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
	c2.writeConfig(dir)
	synced := func(what string, ipcache int) {
		t.Helper()
		await(t, a.dp, what, func(st datapath.State) bool {
			_, ipc := countCluster(st, 2)
			s := a.status("c2")
			return ipc == ipcache && s.Ready && !s.ProgrammedAt.IsZero()
		})
	}
	synced("c2 synced", listed)
	if n := a.rec.Stats().Inline; n != 0 {
		t.Fatalf("%d steps of the listing applied inline", n)
	}

	// Steady: each change alone, on the watch goroutine (unless it finds
	// the worker busy: the sync's trim may still run, so several).
	for i := listed; i < listed+5; i++ {
		c2.ipcache(i)
		await(t, a.dp, "a change after the sync", func(st datapath.State) bool { _, ipc := countCluster(st, 2); return ipc == i+1 })
	}
	inline := a.rec.Stats().Inline
	if inline == 0 {
		t.Fatal("no change after the sync applied inline")
	}

	// A new session (the config changed: another list page size) lists
	// every entry again, a new run of each store: to the worker.
	before := a.status("c2").Reconnects
	cfg, err := c2.srv.EnsureRemoteUser(context.Background(), ownName)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints, cfg.ListPageSize = []string{c2.proxy.endpoint()}, 10
	writeFile(t, filepath.Join(dir, "c2"), must(json.Marshal(cfg)))
	await(t, a.dp, "c2 synced in a new session", func(datapath.State) bool {
		s := a.status("c2")
		return s.Reconnects > before && s.Ready && !s.ProgrammedAt.IsZero()
	})
	if n := a.rec.Stats().Inline; n != inline {
		t.Fatalf("%d steps of the new session's listing applied inline", n-inline)
	}

	// Withdrawn: the drain goes to the worker too.
	if err := os.Remove(filepath.Join(dir, "c2")); err != nil {
		t.Fatal(err)
	}
	await(t, a.dp, "c2 drained", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 0 && ipc == 0
	})
	if n := a.rec.Stats().Inline; n != inline {
		t.Fatalf("%d steps of the drain applied inline", n-inline)
	}
}
