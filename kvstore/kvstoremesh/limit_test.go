package kvstoremesh

import (
	"fmt"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestEntryLimitRefusesRemote: a remote with more valid entries of a kind
// than --kvstoremesh-max-entries is refused with the reason in status
// across the retries, its cache withdrawn and never marked complete (no
// cache canary: agents must not take a refused listing for the remote's
// state); once under the limit it is mirrored again.
func TestEntryLimitRefusesRemote(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	want := c2.fill(nil, 0, 3) // 3 entries of each kind
	c2.canaries()
	l := startLocal(t, func(c *Config) { c.MaxEntries = 2 })
	c2.writeConfig(l.dir)
	l.awaitStatus("c2 refused over the limit", "c2", func(s Status) bool {
		return strings.Contains(s.RefusedReason, watchstore.ErrTooManyEntries.Error()) &&
			strings.Contains(s.RefusedReason, "--kvstoremesh-max-entries")
	})
	refusedAt := l.status("c2").Failures
	testwait.Until(t, wait, "c2 retried", func() (bool, string) {
		s := l.status("c2")
		if !strings.Contains(s.RefusedReason, watchstore.ErrTooManyEntries.Error()) || s.Synced {
			t.Fatalf("after %d failed sessions: reason %q, synced %v; want the entry limit's reason, not synced", s.Failures, s.RefusedReason, s.Synced)
		}
		for _, k := range wire.Kinds() {
			if key := wire.CachedSyncedKey("c2", k); len(l.dump(key)) != 0 {
				t.Fatalf("after %d failed sessions: cache canary %s written for a refused remote", s.Failures, key)
			}
		}
		return s.Failures >= refusedAt+3, fmt.Sprintf("%d failures", s.Failures)
	})
	l.awaitCache("c2's cache withdrawn", "c2", map[string]string{})

	c2.deleteState(0, want)
	l.awaitStatus("c2 mirrored under the limit", "c2", func(s Status) bool { return s.Synced && s.RefusedReason == "" })
	l.awaitCache("c2's cache", "c2", want)
}
