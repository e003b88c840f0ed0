package kvstoremesh

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/ciliuminterop"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestCiliumReadsOurCache points Cilium 1.18's own agent-side reader
// (tools/ciliuminterop) at the local etcd as the local-reader user, with a
// config file for remote c2, as a Cilium agent in KVStoreMesh mode is set
// up: it must take the copied cluster config (cached), wait for the cache
// canaries, read every kind from the cache prefixes and log no warning.
func TestCiliumReadsOurCache(t *testing.T) {
	ciliuminterop.Binary(t) // skip early when the tool is unavailable
	c2 := startSource(t, "c2", 2)
	c2.fill(nil, 0, 3)
	c2.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced })

	ctx := context.Background()
	reader, err := l.srv.EnsureLocalReaderUser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := kvstore.WriteConfigFiles(dir, "c2", reader.Endpoints, reader); err != nil {
		t.Fatal(err)
	}
	rep, err := ciliuminterop.Read(ctx, t, ciliuminterop.ReadConfig{Dir: dir, Name: ownName, ID: ownID, WaitFor: []string{"c2"}, Timeout: time.Minute})
	if err != nil {
		t.Fatalf("%v\nreport: %+v", err, rep)
	}
	if len(rep.Warnings) != 0 {
		t.Errorf("Cilium logged %d warnings: %v", len(rep.Warnings), rep.Warnings)
	}
	c := rep.Clusters["c2"]
	if c == nil {
		t.Fatalf("no report for c2: %+v", rep)
	}
	caps := c.Config.Capabilities
	if c.Config.ID != 2 || !caps.Cached || !caps.SyncedCanaries || caps.MaxConnectedClusters != 255 || caps.ServiceExportsEnabled != nil {
		t.Errorf("cluster config as Cilium read it: %+v", c.Config)
	}
	for _, k := range []string{"nodes", "services", "ipcache", "identities"} {
		if !c.Synced[k] {
			t.Errorf("%s not synced", k)
		}
	}
	if len(c.Nodes) != 3 || len(c.Services) != 3 || len(c.IPCache) != 3 || len(c.Identities) != 3 {
		t.Fatalf("Cilium holds %d nodes, %d services, %d ipcache entries, %d identities; want 3 of each",
			len(c.Nodes), len(c.Services), len(c.IPCache), len(c.Identities))
	}
	for i := range 3 {
		n, ok := c.Nodes[fmt.Sprintf("c2/n%d", i)]
		if !ok || n.ClusterID != 2 || n.IPv4AllocCIDR != fmt.Sprintf("10.2.%d.0/24", i) {
			t.Errorf("node n%d as Cilium parsed it: %+v", i, n)
		}
		ip, ok := c.IPCache[fmt.Sprintf("10.2.%d.1@2", i)]
		if id := 2<<16 | uint32(256+i); !ok || ip.ID != id || ip.HostIP != fmt.Sprintf("192.168.2.%d", i) {
			t.Errorf("ipcache 10.2.%d.1 as Cilium's watcher programs it: %+v", i, ip)
		}
		if _, ok := c.Identities[fmt.Sprint(2<<16|(256+i))]; !ok {
			t.Errorf("identity %d missing: %v", 2<<16|(256+i), c.Identities)
		}
		if s, ok := c.Services[fmt.Sprintf("c2/shop/svc%d", i)]; !ok || !s.Shared || s.ClusterID != 2 {
			t.Errorf("service svc%d as Cilium parsed it: %+v", i, s)
		}
	}
}
