package bpf

import (
	"log/slog"
	"testing"

	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// OpenForTest opens a datapath for a test or benchmark of another package
// (root; skips, or fails under CI, without it) with its pins in a fresh
// directory, and uninstalls it when tb ends. cfg.PinDir is set here; run
// it under the privileged lock (COMMON rules).
func OpenForTest(tb testing.TB, cfg Config) *Datapath {
	tb.Helper()
	testenv.RequireRoot(tb)
	cfg.PinDir = "/run/clustermesh-test/open-" + netnstest.RandomID()
	dp, err := Open(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := dp.Uninstall(); err != nil {
			tb.Error(err)
		}
	})
	return dp
}
