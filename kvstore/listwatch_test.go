package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

const prefix = "cilium/state/ip/v1/default/"

func putKeys(t *testing.T, c *clientv3.Client, n int, tag string) {
	t.Helper()
	ctx := testCtx(t)
	for i := range n {
		if _, err := c.Put(ctx, fmt.Sprintf("%s10.0.0.%d", prefix, i), tag); err != nil {
			t.Fatal(err)
		}
	}
}

func TestListWatchPagedListThenWatch(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	admin := connect(t, srv.AdminConfig()).Etcd()
	putKeys(t, admin, 25, "v1")
	if _, err := admin.Put(testCtx(t), "cilium/state/ip/v1/defaultx", "outside"); err != nil {
		t.Fatal(err)
	}
	cfg := srv.AdminConfig()
	cfg.ListPageSize = 4
	cs := startConsumer(t, connect(t, cfg), prefix)
	cs.waitFor(t, "first list", func(_ map[string]string, n int) bool { return n == 1 })
	evs := cs.snapshotEvents()
	if len(evs) != 26 || evs[25].Kind != kvstore.EventListDone {
		t.Fatalf("got %d events, want 25 upserts then list-done", len(evs))
	}
	for i, ev := range evs[:25] {
		if ev.Kind != kvstore.EventUpsert || ev.Revision == 0 {
			t.Fatalf("event %d = %+v", i, ev)
		}
		if i > 0 && ev.Key <= evs[i-1].Key {
			t.Fatalf("keys out of order: %q after %q", ev.Key, evs[i-1].Key)
		}
	}
	ctx := testCtx(t)
	if _, err := admin.Delete(ctx, prefix+"10.0.0.3"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, prefix+"10.0.1.1", "new"); err != nil {
		t.Fatal(err)
	}
	cs.waitEqual(t, etcdContents(t, admin, prefix))
}

// TestListWatchResync checks that after an interruption the consumer ends
// with exactly the keys etcd holds: keys deleted meanwhile are deleted
// downstream (after the relist is complete), changed and new keys appear.
func TestListWatchResync(t *testing.T) {
	tests := []struct {
		name       string
		restart    bool // stop and restart etcd during the outage
		compact    bool // compact past the consumer's watch revision during the outage
		wantRelist bool
	}{
		{name: "partition, watch resumes from revision"},
		{name: "partition, compaction past watch revision", compact: true, wantRelist: true},
		{name: "etcd restart, watch resumes from revision", restart: true},
		{name: "etcd restart, compaction past watch revision", restart: true, compact: true, wantRelist: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := etcdserver.StartTest(t, etcdserver.Config{})
			admin := connect(t, srv.AdminConfig()).Etcd()
			putKeys(t, admin, 10, "v1")

			// The consumer reaches etcd through a proxy so that it misses
			// the changes made during the outage.
			px := etcdserver.NewProxy(t, srv.Endpoints()[0])
			cfg := srv.AdminConfig()
			cfg.Endpoints = []string{px.Endpoint()}
			cfg.ListPageSize = 3
			cs := startConsumer(t, connect(t, cfg), prefix)
			cs.waitEqual(t, etcdContents(t, admin, prefix))
			cs.waitFor(t, "first list", func(_ map[string]string, n int) bool { return n == 1 })

			px.Block()
			if tc.restart {
				srv.Stop()
				if err := srv.Restart(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for _, k := range []string{"10.0.0.1", "10.0.0.5", "10.0.0.9"} {
				if _, err := admin.Delete(ctx, prefix+k); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := admin.Put(ctx, prefix+"10.0.0.2", "v2"); err != nil {
				t.Fatal(err)
			}
			if _, err := admin.Put(ctx, prefix+"10.0.2.1", "new"); err != nil {
				t.Fatal(err)
			}
			if tc.compact {
				resp, err := admin.Get(ctx, "x")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := admin.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
					t.Fatal(err)
				}
			}
			want := etcdContents(t, admin, prefix)
			px.Unblock()

			cs.waitEqual(t, want)
			if tc.wantRelist {
				cs.waitFor(t, "relist", func(_ map[string]string, n int) bool { return n >= 2 })
			} else if n := cs.lists(); n != 1 {
				// The watch resumed from its revision: the changes came
				// as events, no second listing was needed.
				t.Errorf("%d lists, want 1 (the watch resumed)", n)
			}
			checkDeletes(t, cs.snapshotEvents(), want)
		})
	}
}

// checkDeletes fails if a key that etcd still holds was ever deleted
// downstream, or if a synthetic delete came before its relist's upserts.
func checkDeletes(t *testing.T, evs []kvstore.Event, final map[string]string) {
	t.Helper()
	for i, ev := range evs {
		if ev.Kind != kvstore.EventDelete {
			continue
		}
		if _, ok := final[ev.Key]; ok {
			t.Fatalf("event %d deletes %q, which etcd still holds", i, ev.Key)
		}
	}
}

// TestListWatchReplacedEtcd replaces etcd by another one with other
// contents on the same address: the consumer must notice (cluster ID
// changed, or revision went backwards) and converge by relisting.
func TestListWatchReplacedEtcd(t *testing.T) {
	tests := []struct {
		name      string
		sameToken bool // the replacement bootstraps with the old token: same cluster ID
	}{
		{name: "different cluster ID"},
		{name: "same cluster ID, revision rewound", sameToken: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := etcdserver.StartTest(t, etcdserver.Config{})
			admin := connect(t, srv.AdminConfig()).Etcd()
			for range 5 {
				putKeys(t, admin, 10, "old")
			}
			c := connect(t, srv.AdminConfig())
			cs := startConsumer(t, c, prefix)
			cs.waitEqual(t, etcdContents(t, admin, prefix))
			oldID := srv.ClusterID()
			srv.Stop()

			cfg := srv.Config()
			cfg.DataDir = filepath.Join(t.TempDir(), "replacement")
			if !tc.sameToken {
				cfg.InitialClusterToken = "" // a new data dir gets a new token by default
			}
			cfg.InitialCluster = ""
			repl := etcdserver.StartTest(t, cfg)
			if (repl.ClusterID() != oldID) == tc.sameToken {
				t.Fatalf("cluster ID %x -> %x", oldID, repl.ClusterID())
			}
			admin2 := connect(t, repl.AdminConfig()).Etcd()
			for _, k := range []string{"10.0.0.2", "10.9.9.9"} {
				if _, err := admin2.Put(ctx, prefix+k, "replacement"); err != nil {
					t.Fatal(err)
				}
			}
			// The consumer may relist before the puts above (and then see
			// 10.0.0.2 deleted and re-created): only the end state is
			// deterministic here.
			cs.waitEqual(t, etcdContents(t, admin2, prefix))
			st := c.Status(ctx)
			if st.ClusterID != repl.ClusterID() {
				t.Fatalf("pinned cluster ID %x, want %x", st.ClusterID, repl.ClusterID())
			}
		})
	}
}

// TestListWatchRelistComparesValues replaces etcd, while the consumer is
// cut off, by one with the same etcd cluster ID whose revisions are
// refilled so that a key holds another value at the same modification
// revision, then compacted so that the consumer relists: the relist must
// deliver the new value (it compares values, not revisions).
func TestListWatchRelistComparesValues(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	admin := connect(t, srv.AdminConfig()).Etcd()
	putKeys(t, admin, 10, "old")
	px := etcdserver.NewProxy(t, srv.Endpoints()[0])
	cfg := srv.AdminConfig()
	cfg.Endpoints = []string{px.Endpoint()}
	cs := startConsumer(t, connect(t, cfg), prefix)
	cs.waitEqual(t, etcdContents(t, admin, prefix))
	last, err := admin.Get(ctx, prefix+"10.0.0.9")
	if err != nil {
		t.Fatal(err)
	}
	oldRev, oldID := last.Kvs[0].ModRevision, srv.ClusterID()

	px.Block()
	srv.Stop()
	rcfg := srv.Config()
	rcfg.DataDir, rcfg.InitialCluster = filepath.Join(t.TempDir(), "replacement"), ""
	repl := etcdserver.StartTest(t, rcfg) // same token and ports: same cluster ID
	if repl.ClusterID() != oldID {
		t.Fatalf("cluster ID %x -> %x, want the same", oldID, repl.ClusterID())
	}
	admin2 := connect(t, repl.AdminConfig()).Etcd()
	putKeys(t, admin2, 9, "old") // 10.0.0.0-8 as before
	cur, err := admin2.Get(ctx, "filler")
	if err != nil {
		t.Fatal(err)
	}
	for rev := cur.Header.Revision; rev < oldRev-1; {
		resp, err := admin2.Put(ctx, "filler", "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	resp, err := admin2.Put(ctx, prefix+"10.0.0.9", "replacement")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision != oldRev {
		t.Fatalf("refilled put at revision %d, want %d", resp.Header.Revision, oldRev)
	}
	for range 2 {
		if _, err := admin2.Put(ctx, "filler", "y"); err != nil {
			t.Fatal(err)
		}
	}
	// The consumer's watch resumes at oldRev+1, compacted now.
	if _, err := admin2.Compact(ctx, oldRev+2, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	px.Unblock()
	cs.waitFor(t, "relist", func(_ map[string]string, n int) bool { return n >= 2 })
	cs.waitEqual(t, etcdContents(t, admin2, prefix))
}

// TestEmbeddedClusterIDPerDataDir checks that two embedded etcds on the
// same name, cluster name and ports but different data dirs have different
// etcd cluster IDs, and that a restart on the same data dir keeps it.
func TestEmbeddedClusterIDPerDataDir(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	id := srv.ClusterID()
	if err := srv.Restart(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if srv.ClusterID() != id {
		t.Fatalf("restart on the same data dir changed the cluster ID %x -> %x", id, srv.ClusterID())
	}
	srv.Stop()
	cfg := srv.Config()
	cfg.DataDir = filepath.Join(t.TempDir(), "empty")
	cfg.InitialCluster, cfg.InitialClusterToken = "", ""
	repl := etcdserver.StartTest(t, cfg)
	if repl.ClusterID() == id {
		t.Fatalf("an etcd bootstrapped on an empty data dir kept cluster ID %x", id)
	}
}

// TestListWatchRejectedKeysNotRemembered: keys the handler rejects are not
// remembered, so that what a remote writes under them costs nothing: a
// relist delivers them again and their deletion is not reported.
func TestListWatchRejectedKeysNotRemembered(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	admin := connect(t, srv.AdminConfig()).Etcd()
	putKeys(t, admin, 3, "good")
	for _, k := range []string{"bad-1", "bad-2"} {
		if _, err := admin.Put(ctx, prefix+k, "bad"); err != nil {
			t.Fatal(err)
		}
	}
	px := etcdserver.NewProxy(t, srv.Endpoints()[0])
	cfg := srv.AdminConfig()
	cfg.Endpoints = []string{px.Endpoint()}
	cs := startConsumer(t, connect(t, cfg), prefix, kvstore.Rejected(func(k string) bool { return strings.Contains(k, "bad-") }))
	cs.waitFor(t, "first list", func(_ map[string]string, n int) bool { return n == 1 })

	px.Block()
	if _, err := admin.Delete(ctx, prefix+"bad-1"); err != nil {
		t.Fatal(err)
	}
	resp, err := admin.Put(ctx, prefix+"10.0.0.1", "changed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	px.Unblock()
	cs.waitFor(t, "relist", func(_ map[string]string, n int) bool { return n == 2 })
	var bad2, deletes int
	for _, ev := range cs.snapshotEvents() {
		switch {
		case ev.Key == prefix+"bad-2" && ev.Kind == kvstore.EventUpsert:
			bad2++
		case ev.Kind == kvstore.EventDelete:
			deletes++
		}
	}
	if bad2 != 2 {
		t.Errorf("rejected key delivered %d times, want 2 (first list and relist)", bad2)
	}
	if deletes != 0 {
		t.Errorf("%d deletes reported, want none (bad-1 was rejected)", deletes)
	}
}

func TestListWatchStopsWithContext(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	c := connect(t, srv.AdminConfig())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	listed := make(chan struct{}, 1)
	go func() {
		done <- c.ListWatch(ctx, prefix, func(ev kvstore.Event) {
			if ev.Kind == kvstore.EventListDone {
				listed <- struct{}{}
			}
		})
	}()
	<-listed
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ListWatch = %v, want nil after cancel", err)
	}
}

// TestListWatchBacksOffWhenWatchFailsAfterList compacts etcd past the list
// revision right after every list, so that every watch fails at once. A
// successful list must not restart the backoff: the relists are spaced by
// at least the policy's growing lower bounds (25ms·2^n for the n-th).
func TestListWatchBacksOffWhenWatchFailsAfterList(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	c := connect(t, srv.AdminConfig())
	admin := c.Etcd()
	putKeys(t, admin, 3, "v1")
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	const relists = 6
	var at []time.Time // BeforeRelist runs in ListWatch's goroutine
	done := make(chan error, 1)
	handle := func(ev kvstore.Event) {
		if ev.Kind != kvstore.EventListDone {
			return
		}
		var rev int64
		for range 2 {
			resp, err := admin.Put(ctx, "other/key", "x")
			if err != nil {
				return
			}
			rev = resp.Header.Revision
		}
		_, _ = admin.Compact(ctx, rev)
	}
	before := kvstore.BeforeRelist(func(_ context.Context, reason error) error {
		if !errors.Is(reason, rpctypes.ErrCompacted) {
			t.Errorf("relist %d: reason %v, want compaction", len(at), reason)
		}
		if at = append(at, time.Now()); len(at) == relists {
			cancel()
		}
		return nil
	})
	go func() { done <- c.ListWatch(ctx, prefix, handle, before) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(at) != relists {
		t.Fatalf("%d relists, want %d", len(at), relists)
	}
	for i := 1; i < relists; i++ {
		// Between relist i and i+1 ListWatch waited after failure i+1
		// (Delay(i) of the policy, at least 25ms·2^i).
		if gap, low := at[i].Sub(at[i-1]), 25*time.Millisecond<<i; gap < low {
			t.Errorf("relist %d came %v after the previous, want at least %v", i+1, gap, low)
		}
	}
}
