package remotecluster

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// identitySink records the identities handed to the policy engine.
type identitySink struct {
	mu  sync.Mutex
	ids map[uint32]string
}

func (s *identitySink) UpsertIdentity(id uint32, ls wire.Labels) {
	s.mu.Lock()
	s.ids[id] = ls.Format()
	s.mu.Unlock()
}

func (s *identitySink) DeleteIdentity(id uint32) {
	s.mu.Lock()
	delete(s.ids, id)
	s.mu.Unlock()
}

func (s *identitySink) get() map[uint32]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uint32]string, len(s.ids))
	for k, v := range s.ids {
		out[k] = v
	}
	return out
}

// TestIdentitiesToPolicy: a remote's valid identities reach Config.Identities
// (an out-of-range one does not), and removing the remote's config deletes
// them.
func TestIdentitiesToPolicy(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.identityEntry(300)
	c2.identityEntry(301)
	c2.put(wire.IdentityKey(3<<16|300), []byte("k8s:io.cilium.k8s.policy.cluster=c3;")) // another cluster's range
	c2.canaries()
	sink := &identitySink{ids: map[uint32]string{}}
	cfg := testConfig(dir, t.TempDir())
	cfg.Identities = sink
	startAgent(t, cfg, memory.New(), nil)
	c2.writeConfig(dir)

	want := "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;"
	testwait.Until(t, 20*time.Second, "c2's identities", func() (bool, string) {
		got := sink.get()
		return len(got) == 2 && got[c2.identity(300)] == want && got[c2.identity(301)] == want, ""
	})
	c2.del(wire.IdentityKey(c2.identity(301)))
	testwait.Until(t, 20*time.Second, "deleted identity", func() (bool, string) {
		_, ok := sink.get()[c2.identity(301)]
		return !ok, ""
	})
	if err := os.Remove(filepath.Join(dir, "c2")); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, 20*time.Second, "identities drained with the config", func() (bool, string) { return len(sink.get()) == 0, "" })
}
