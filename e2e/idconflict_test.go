//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestConflictingClusterIDRefused (scenario 8): the third cluster's
// clustermesh-apiserver is reconfigured with the second cluster's ID (a
// copy-pasted value; `clustermesh connect` refuses such a pair, so this is
// how a conflict reaches a running mesh). The first cluster's agents refuse
// it (the ID is held by the second cluster), the second's too (it is their
// own), and `clustermesh status` names the conflict. The first two
// clusters keep talking meanwhile. With its own ID back, the third cluster
// is accepted again and reachable.
func TestConflictingClusterIDRefused(t *testing.T) {
	m := mesh(t)
	cl := clientPod(t, m)
	c1, c2, c3 := m.Clusters[0], m.Clusters[1], m.Clusters[2]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	c3.APIServer.Stop(5 * time.Second)
	if err := c3.StartAPIServer(ctx, "--cluster-id="+strconv.Itoa(int(c2.ID))); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		c3.APIServer.Stop(5 * time.Second)
		if err := c3.StartAPIServer(context.Background()); err != nil {
			t.Errorf("restart %s with its own ID: %v", c3.Name, err)
		}
	}
	t.Cleanup(restore)

	// Every agent of c1 and c2 refuses c3, saying why; in connection mode
	// kvstoremesh the refusal is their kvstoremesh's, which connects to
	// c3 for them.
	for _, c := range []struct {
		nodes string
		want  string
	}{{c1.Name, "is used by connected cluster \"" + c2.Name + "\""}, {c2.Name, "remote uses the local cluster ID"}} {
		// In kvstoremesh mode the kvstoremesh withdrew c3's cache with its
		// cluster config copy: the agents see c3 not ready, not ready and
		// empty.
		cached := m.Connection() == harness.ConnectionKVStoreMesh
		if cached {
			if err := waitCacheRefused(ctx, m, m.Cluster(c.nodes), c3.Name, c.want); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range m.Cluster(c.nodes).Nodes {
			err := eventually(60*time.Second, func() error {
				st, err := n.Status(ctx)
				if err != nil {
					return err
				}
				for _, r := range st.RemoteClusters {
					if r.Name != c3.Name {
						continue
					}
					if r.Ready || !cached && (!strings.Contains(r.RefusedReason, "cluster ID conflict") || !strings.Contains(r.RefusedReason, c.want)) {
						return fmt.Errorf("agent %s/%s: remote %s ready %v, refused %q; want not ready (direct mode: refused with %q)", c.nodes, n.Name, c3.Name, r.Ready, r.RefusedReason, c.want)
					}
					return nil
				}
				if cached {
					return nil
				}
				return fmt.Errorf("agent %s/%s has no remote %s", c.nodes, n.Name, c3.Name)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}

	// `clustermesh status` says so, in the table and in JSON, once every
	// agent's report has caught up with its socket.
	if err := m.WaitReports(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	args := []string{"--context=" + c1.Name, "--context=" + c2.Name, "--context=" + c3.Name}
	var table string
	err := eventually(30*time.Second, func() error {
		b, err := m.CLIStatus(ctx, args...)
		if err != nil {
			return err
		}
		out := string(b)
		table = out
		for _, want := range []string{"refused: cluster ID conflict", `is used by connected cluster "` + c2.Name + `"`, " refused ", "Mesh NOT ready"} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("status output lacks %q:\n%s", want, out)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clustermesh status %s:\n%s", strings.Join(args, " "), table)
	js, err := m.CLIStatus(ctx, append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Ready    bool `json:"ready"`
		Clusters []struct {
			Cluster  string   `json:"cluster"`
			Problems []string `json:"problems"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal(js, &st); err != nil {
		t.Fatal(err)
	}
	if st.Ready {
		t.Error("status -o json: ready with a conflicting cluster ID")
	}
	for _, c := range st.Clusters {
		if c.Cluster != c1.Name && c.Cluster != c2.Name {
			continue
		}
		found := false
		for _, p := range c.Problems {
			found = found || (strings.Contains(p, c3.Name) && strings.Contains(p, "cluster ID conflict"))
		}
		if !found {
			t.Errorf("status -o json: cluster %s problems %q do not name the conflict with %s", c.Cluster, c.Problems, c3.Name)
		}
	}

	// c1 and c2 are unaffected.
	for _, p := range c2.Pods() {
		if _, err := cl.HTTP(p.HTTPAddr(), 2*time.Second); err != nil {
			t.Errorf("during the conflict: %s → %s/%s: %v", cl.Name, c2.Name, p.Name, err)
		}
	}

	restore()
	if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, p := range c3.Pods() {
		err := eventually(30*time.Second, func() error {
			s, err := cl.HTTP(p.HTTPAddr(), 2*time.Second)
			if err == nil && s.Cluster != c3.Name {
				err = fmt.Errorf("answered by %v", s)
			}
			return err
		})
		if err != nil {
			t.Errorf("after the fix: %s → %s/%s: %v", cl.Name, c3.Name, p.Name, err)
		}
	}
}

// waitCacheRefused waits until c's kvstoremesh reports remote refused for
// a cluster ID conflict whose reason contains want, and not synced.
func waitCacheRefused(ctx context.Context, m *harness.Mesh, c *harness.Cluster, remote, want string) error {
	return eventually(60*time.Second, func() error {
		r, err := cachedRemote(ctx, m, c, remote)
		if err != nil {
			return err
		}
		if r.Synced || !strings.Contains(r.LastError, "cluster ID conflict") || !strings.Contains(r.LastError, want) {
			return fmt.Errorf("%s's kvstoremesh: remote %s synced %v, last error %q; want refused with %q", c.Name, remote, r.Synced, r.LastError, want)
		}
		return nil
	})
}
