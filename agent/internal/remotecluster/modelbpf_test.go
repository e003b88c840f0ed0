package remotecluster

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// modelBPFDatapath is the eBPF datapath of TestModelRandomized -model.bpf:
// maps pinned under a test directory, loaded again on every agent restart.
type modelBPFDatapath struct {
	cfg bpf.Config
	dp  *bpf.Datapath
}

func openModelBPF(t *testing.T) *modelBPFDatapath {
	testenv.RequireRoot(t)
	b := &modelBPFDatapath{cfg: bpf.Config{PinDir: fmt.Sprintf("/run/clustermesh-test/model-%d", os.Getpid()), CTEntries: 16384}}
	t.Cleanup(func() {
		if b.dp == nil {
			var err error
			if b.dp, err = bpf.Open(b.cfg, log); err != nil {
				t.Errorf("reopen to uninstall: %v", err)
				return
			}
		}
		if err := b.dp.Uninstall(); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	return b
}

// open loads the datapath (reusing the pinned maps) and returns its writer.
func (b *modelBPFDatapath) open(t *testing.T) modelDatapath {
	dp, err := bpf.Open(b.cfg, log)
	if err != nil {
		t.Fatalf("open bpf datapath: %v", err)
	}
	b.dp = dp
	w, err := bpf.NewWriter(dp, log)
	if err != nil {
		t.Fatalf("bpf writer: %v", err)
	}
	return &notifyingWriter{Writer: w, ch: make(chan struct{})}
}

// close closes the datapath; its maps stay pinned.
func (b *modelBPFDatapath) close() {
	if b.dp != nil {
		b.dp.Close()
		b.dp = nil
	}
}

// notifyingWriter closes its channel after every Apply, as the memory
// datapath's Changed does.
type notifyingWriter struct {
	*bpf.Writer
	mu sync.Mutex
	ch chan struct{}
}

func (w *notifyingWriter) Apply(ctx context.Context, b datapath.Batch) error {
	err := w.Writer.Apply(ctx, b)
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
	return err
}

func (w *notifyingWriter) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}
