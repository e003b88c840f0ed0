//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/ciliuminterop"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestCiliumReadsAMeshedCluster: in the same run as our agents, Cilium
// 1.18's own reader (tools/ciliuminterop) syncs one of the meshed
// clusters. The cluster gets a Cilium reader the way `clustermesh connect
// --auth-mode legacy` adds one (its users ConfigMap), its apiserver creates
// the user "remote" and writes the client config; Cilium must connect,
// validate the cluster config and sync nodes, services, identities and
// every pod's ipcache entry without a warning, while the other clusters'
// agents keep reaching those pods.
func TestCiliumReadsAMeshedCluster(t *testing.T) {
	ciliuminterop.Binary(t) // skip early when the tool is unavailable
	m := mesh(t)
	c := m.Clusters[0]
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const reader = "cilium-e2e"
	err := c.EditRemoteUsers(ctx, func(u *harness.RemoteUsers) { u.LegacyClusters = append(u.LegacyClusters, reader) })
	if errors.Is(err, harness.ErrNoUsersFile) {
		t.Skip("the mesh was joined without users files (E2E_JOIN=direct)")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.EditRemoteUsers(context.Background(), func(u *harness.RemoteUsers) {
			u.LegacyClusters = slices.DeleteFunc(u.LegacyClusters, func(s string) bool { return s == reader })
		}); err != nil {
			t.Errorf("remove the Cilium reader: %v", err)
		}
	}()
	var rc kvstore.Config
	if err := eventually(time.Minute, func() error {
		var err error
		rc, err = kvstore.LoadConfig(c.RemoteConfigFile(reader))
		return err
	}); err != nil {
		t.Fatalf("the apiserver wrote no client config for %s: %v", reader, err)
	}
	dir := t.TempDir()
	if err := kvstore.WriteConfigFiles(dir, c.Name, []string{c.EtcdHostEndpoint()}, rc); err != nil {
		t.Fatal(err)
	}
	if cert, err := os.ReadFile(rc.CertFile); err != nil || len(cert) == 0 {
		t.Fatalf("client certificate: %v", err)
	}

	rep, err := ciliuminterop.Read(ctx, t, ciliuminterop.ReadConfig{Dir: dir, Name: reader, ID: 200, WaitFor: []string{c.Name}, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("%v\nreport: %+v", err, rep)
	}
	if len(rep.Warnings) != 0 {
		t.Errorf("Cilium logged %d warnings:\n%s", len(rep.Warnings), strings.Join(rep.Warnings, "\n"))
	}
	cr := rep.Clusters[c.Name]
	if cr.Config.ID != c.ID || !cr.Synced["serviceexports"] {
		t.Errorf("cluster config %+v, synced %v", cr.Config, cr.Synced)
	}
	if len(cr.Nodes) != len(c.Nodes) {
		t.Errorf("Cilium synced %d nodes of %s, want %d", len(cr.Nodes), c.Name, len(c.Nodes))
	}
	lo, hi := c.ID<<16, c.ID<<16|0xffff
	for _, p := range c.Pods() {
		e, ok := cr.IPCache[fmt.Sprintf("%s@%d", p.IP, c.ID)]
		if !ok {
			t.Errorf("Cilium's ipcache has no %s (%s)", p.IP, p.Name)
			continue
		}
		if e.ID < lo || e.ID > hi || e.Pod != p.Name {
			t.Errorf("%s: %+v", p.Name, e)
		}
		if _, ok := cr.Identities[fmt.Sprint(e.ID)]; !ok {
			t.Errorf("%s: identity %d not in Cilium's identity cache", p.Name, e.ID)
		}
	}

	// Same run: our agents in the other clusters still reach c's pods.
	for _, src := range m.Clusters[1:] {
		from := src.Pods()[0]
		for _, to := range c.Pods() {
			if err := eventually(30*time.Second, func() error {
				s, err := from.HTTP(to.HTTPAddr(), 2*time.Second)
				if err == nil && (s.Cluster != c.Name || s.Pod != to.Name) {
					err = fmt.Errorf("answered by %v", s)
				}
				return err
			}); err != nil {
				t.Errorf("%s/%s → %s/%s: %v", src.Name, from.Name, c.Name, to.Name, err)
			}
		}
	}
}
