//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"
)

// TestMeshStatus: `clustermesh status --wait` reports every cluster ready
// (the apiservers' and agents' status ConfigMaps).
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
}
