package remoteconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"
)

// ErrConfigWatchClosed: the watcher of the config directory stopped and a
// new one could not be made; WatchDir returns it (wrapped) so that the
// process stops instead of running on without noticing config changes.
var ErrConfigWatchClosed = errors.New("config directory watcher closed")

// ReadDir returns the config files of dir by cluster name: regular files
// (symlinks followed) whose names contain no dot. A cluster name never
// holds a dot, so this skips the Secret volume's "..data" entries, editor
// and temporary files, and the certificate files that `clustermesh
// connect` stores next to each config (<cluster>.etcd-client-ca.crt,
// <cluster>.etcd-client.crt, <cluster>.etcd-client.key).
func ReadDir(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		out[name] = data
	}
	return out, nil
}

// DirConfig configures WatchDir.
type DirConfig struct {
	Dir string
	// Rescan rescans the directory even without fsnotify events.
	Rescan time.Duration
	Clock  clock.WithTicker
	// NewWatcher makes the directory watcher (default fsnotify.NewWatcher).
	NewWatcher func() (*fsnotify.Watcher, error)
	Log        *slog.Logger
}

// WatchDir watches cfg.Dir until ctx is done (nil). It calls first once
// the watch is set up, then scan after every event in the directory and
// every Rescan. A watcher that closes by itself is replaced; if no new
// one can be made, WatchDir returns ErrConfigWatchClosed.
func WatchDir(ctx context.Context, cfg DirConfig, first, scan func()) error {
	if cfg.NewWatcher == nil {
		cfg.NewWatcher = fsnotify.NewWatcher
	}
	w, err := cfg.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", cfg.Dir, err)
	}
	defer func() { w.Close() }()
	watching := addWatch(cfg, w)
	first()

	tick := cfg.Clock.NewTicker(cfg.Rescan)
	defer tick.Stop()
	for {
		closed := false
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if closed = !ok; ok {
				cfg.Log.Debug("config directory changed", "event", ev.String())
			}
		case err, ok := <-w.Errors:
			if closed = !ok; ok {
				cfg.Log.Warn("watching config directory", "error", err)
			}
		case <-tick.C():
			if !watching {
				watching = addWatch(cfg, w)
			}
		}
		if closed {
			// The watcher stopped by itself: make a new one, or stop
			// rather than run on blind to config changes.
			cfg.Log.Warn("config directory watcher closed; watching again", "dir", cfg.Dir)
			w.Close()
			nw, err := cfg.NewWatcher()
			if err != nil {
				return fmt.Errorf("watch %s: %w: %w", cfg.Dir, ErrConfigWatchClosed, err)
			}
			w = nw
			watching = addWatch(cfg, w)
		}
		scan()
	}
}

func addWatch(cfg DirConfig, w *fsnotify.Watcher) bool {
	if err := w.Add(cfg.Dir); err != nil {
		cfg.Log.Warn("cannot watch config directory, rescanning periodically", "dir", cfg.Dir, "error", err)
		return false
	}
	return true
}

// ThroughCache returns files (config files by cluster name, as ReadDir
// returns them) with every content replaced by that of the file cache: the
// client config of a kvstoremesh cache that holds every one of them. A
// change of the cache file is then a change of every remote's config.
func ThroughCache(files map[string][]byte, cache string) (map[string][]byte, error) {
	data, err := os.ReadFile(cache)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(files))
	for name := range files {
		out[name] = data
	}
	return out, nil
}
