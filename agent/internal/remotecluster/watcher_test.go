package remotecluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// TestWatcherClosed closes the config directory watcher under a running
// manager, as fsnotify does when its inotify instance fails: the manager
// must watch again (a file written afterwards is picked up without a
// rescan) or, when it cannot, return an error that stops the agent.
func TestWatcherClosed(t *testing.T) {
	errNoInotify := errors.New("no inotify instance left")
	for _, tc := range []struct {
		name     string
		rebuilds bool // a new watcher can be made after the first closed
	}{
		{"watches again", true},
		{"fails when it cannot watch", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(dir, "")
			cfg.RescanInterval = time.Hour // only the watcher can reveal a new file
			cfg.BackoffMin, cfg.BackoffMax = time.Second, time.Second
			dp := memory.New()
			rec := dpsync.New(dpsync.Config{ClusterID: ownID}, dp, log, clock.RealClock{})
			m := New(cfg, rec, servicemerge.New(servicemerge.Config{ClusterID: ownID}, rec), log, clock.RealClock{})
			made := make(chan *fsnotify.Watcher, 2)
			calls := 0 // only Run's goroutine calls newWatcher
			m.newWatcher = func() (*fsnotify.Watcher, error) {
				if calls++; calls > 1 && !tc.rebuilds {
					made <- nil
					return nil, errNoInotify
				}
				w, err := fsnotify.NewWatcher()
				made <- w
				return w, err
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			first := <-made
			if err := first.Close(); err != nil {
				t.Fatal(err)
			}
			if !tc.rebuilds {
				select {
				case err := <-done:
					if !errors.Is(err, ErrConfigWatchClosed) || !errors.Is(err, errNoInotify) {
						t.Fatalf("Run returned %v, want %v and %v", err, ErrConfigWatchClosed, errNoInotify)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("Run went on without a directory watcher")
				}
				return
			}
			select { // a new watcher exists; Run adds the directory to it next
			case <-made:
			case err := <-done:
				t.Fatalf("Run returned %v after the watcher closed", err)
			}
			testwait.Until(t, 10*time.Second, "new config seen through the new watcher", func() (bool, string) {
				select {
				case err := <-done:
					t.Fatalf("Run returned %v after the watcher closed", err)
				default:
				}
				writeFile(t, filepath.Join(dir, "c2"), []byte("endpoints: [https://127.0.0.1:1]\n"))
				s := m.Status()
				return len(s) == 1 && s[0].Name == "c2", fmt.Sprint(s)
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run after cancel: %v", err)
			}
		})
	}
}
