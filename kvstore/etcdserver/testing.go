package etcdserver

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestLogger returns a logger for tests: silent unless CLUSTERMESH_TEST_LOG
// is set (then debug output on stderr). Background goroutines of etcd may
// log after a test ended, so it never writes to testing.T.
func TestLogger() *slog.Logger {
	if os.Getenv("CLUSTERMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// StartTest starts a single-member etcd for a test, in tb.TempDir() on free
// ports, with fsync off, and stops it when the test ends. Unset fields of
// cfg take test defaults (cluster name "c1").
func StartTest(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	if cfg.ClusterName == "" {
		cfg.ClusterName = "c1"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(tb.TempDir(), "etcd")
	}
	cfg.UnsafeNoFsync = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg, TestLogger())
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}
