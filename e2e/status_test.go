//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"
)

// TestMeshStatus runs `clustermesh status` for every cluster and logs it.
// It asserts only that the command runs: the mesh is not reported ready
// until the clustermesh-apiserver publishes its status report (it has no
// --status-namespace yet).
func TestMeshStatus(t *testing.T) {
	m := mesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"status"}
	for _, c := range m.Clusters {
		args = append(args, "--context="+c.Name)
	}
	out, err := m.CLI(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clustermesh %v:\n%s", args, out)
}
