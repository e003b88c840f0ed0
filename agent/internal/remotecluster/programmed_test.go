package remotecluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// applyLog records, after every applied batch, when it returned and how
// many ipcache entries of cluster 2 the datapath then held.
type applyLog struct {
	*memory.Datapath
	mu      sync.Mutex
	applies []appliedAt
}

type appliedAt struct {
	at      time.Time
	ipcache int
}

func (l *applyLog) Apply(ctx context.Context, b datapath.Batch) error {
	if err := l.Datapath.Apply(ctx, b); err != nil {
		return err
	}
	st, _ := l.Dump()
	_, ipc := countCluster(st, 2)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.applies = append(l.applies, appliedAt{at: time.Now(), ipcache: ipc})
	return nil
}

// heldBy returns the cluster 2 ipcache entries held after the last batch
// applied by t.
func (l *applyLog) heldBy(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := -1
	for _, a := range l.applies {
		if !a.at.After(t) {
			n = a.ipcache
		}
	}
	return n
}

// A remote's ProgrammedAt is the return of the flush that holds its full
// state: every entry is in the datapath by then.
func TestProgrammedAt(t *testing.T) {
	const pods = 600
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	for i := range 3 {
		c2.node(i)
	}
	for i := range pods {
		c2.ipcache(i)
	}
	c2.identityEntry(300)
	c2.canaries()

	dp := memory.New()
	l := &applyLog{Datapath: dp}
	a := startAgent(t, testConfig(dir, t.TempDir()), dp, l)
	start := time.Now()
	c2.writeConfig(dir)

	testwait.Until(t, 20*time.Second, "c2 programmed", func() (bool, string) {
		st := a.status("c2")
		return !st.ProgrammedAt.IsZero(), "not programmed yet"
	})
	st := a.status("c2")
	if !st.Ready {
		t.Errorf("programmed but not ready: %+v", st)
	}
	if held := l.heldBy(st.ProgrammedAt); held != pods {
		t.Errorf("the datapath held %d of %d ipcache entries at ProgrammedAt %v", held, pods, st.ProgrammedAt)
	}
	if st.SyncTook <= 0 || st.ProgrammedAt.Sub(start) < st.SyncTook {
		t.Errorf("sync took %v, programmed %v after the config was written", st.SyncTook, st.ProgrammedAt.Sub(start))
	}
}
