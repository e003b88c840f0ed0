package kubetest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// StartForTest starts a control plane for t (skipping, or failing under CI,
// when the Kubernetes binaries are missing) and stops it when t ends.
func StartForTest(t testing.TB, cfg Config) *ControlPlane {
	t.Helper()
	cfg.BinDir = testenv.KubeBinDir(t)
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	cp, err := Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	return cp
}
