//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"
)

// TestMeshStatus: `clustermesh status --wait` reports every cluster ready
// (the apiservers' and agents' status ConfigMaps), and within a few
// seconds every agent's report in the Kubernetes API says what its status
// socket says: the same remotes, readiness and entry counts.
func TestMeshStatus(t *testing.T) {
	m := mesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"status", "--wait", "--timeout=2m"}
	for _, c := range m.Clusters {
		args = append(args, "--context="+c.Name)
	}
	out, err := m.CLI(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clustermesh %v:\n%s", args, out)

	// Nothing changes in the mesh meanwhile, so both views must meet; the
	// agents (2 nodes per cluster) write counts-only changes within a second.
	if err := m.WaitReports(ctx, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}
