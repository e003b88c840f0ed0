package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/ciliuminterop"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestCiliumReadsOurEtcd points Cilium 1.18's own agent-side reader
// (tools/ciliuminterop: its clustermesh config directory, kvstore client,
// cluster config validation, WatchStores behind the sync canaries and its
// node, service, ipcache and identity validators) at this apiserver's
// etcd, with the client config files a remote cluster is given, in both of
// Cilium's auth modes. Cilium must connect, sync every kind (and the
// serviceexports canary, as its KVStoreMesh does) and log no warning.
func TestCiliumReadsOurEtcd(t *testing.T) {
	ciliuminterop.Binary(t) // skip early when the tool is unavailable
	h := newHarness(t, "cilium", "")
	h.node("cn1", "192.168.7.1", "10.7.1.0/24", "fd07:1::/64")
	h.pod("web-1", "cn1", "192.168.7.1", map[string]string{"app": "web"}, "10.7.1.10", "fd07:1::10")
	h.service("web", "10.96.7.10", map[string]string{"service.cilium.io/global": "true"})
	h.waitBackends("web", "10.7.1.10") // a single-stack IPv4 Service
	h.start()

	for _, mode := range []struct {
		name string
		user func() (kvstore.Config, error)
	}{
		{"per-cluster user remote-<reader>", func() (kvstore.Config, error) { return h.etcd.EnsureRemoteUser(h.ctx, "cilium-reader") }},
		{"legacy user remote", func() (kvstore.Config, error) { return h.etcd.EnsureLegacyRemoteUser(h.ctx) }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			rc, err := mode.user()
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := kvstore.WriteConfigFiles(dir, h.cluster, rc.Endpoints, rc); err != nil {
				t.Fatal(err)
			}
			rep, err := ciliuminterop.Read(h.ctx, t, ciliuminterop.ReadConfig{Dir: dir, Name: "cilium-reader", ID: 200, WaitFor: []string{h.cluster}, Timeout: time.Minute})
			if err != nil {
				t.Fatalf("%v\nreport: %+v", err, rep)
			}
			checkCiliumReport(t, h, rep)
		})
	}
}

func checkCiliumReport(t *testing.T, h *harness, rep ciliuminterop.Report) {
	t.Helper()
	if len(rep.Warnings) != 0 {
		t.Errorf("Cilium logged %d warnings:\n%s", len(rep.Warnings), strings.Join(rep.Warnings, "\n"))
	}
	c := rep.Clusters[h.cluster]
	if c == nil {
		t.Fatalf("no report for %s: %+v", h.cluster, rep)
	}
	caps := c.Config.Capabilities
	if c.Config.ID != h.id || !caps.SyncedCanaries || caps.Cached || caps.MaxConnectedClusters != 255 || caps.ServiceExportsEnabled == nil || *caps.ServiceExportsEnabled {
		t.Errorf("cluster config as Cilium read it: %+v", c.Config)
	}
	for _, k := range []string{"nodes", "services", "ipcache", "identities", "serviceexports"} {
		if !c.Synced[k] {
			t.Errorf("%s not synced", k)
		}
	}

	n, ok := c.Nodes[h.cluster+"/cn1"]
	if !ok || len(c.Nodes) != 1 {
		t.Fatalf("nodes %+v", c.Nodes)
	}
	if n.ClusterID != h.id || n.Source != "k8s" || n.IPv4AllocCIDR != "10.7.1.0/24" || n.IPv6AllocCIDR != "fd07:1::/64" ||
		!slices.Contains(n.Addresses, "InternalIP=192.168.7.1") {
		t.Errorf("node as Cilium parsed it: %+v", n)
	}

	if len(c.Identities) != 1 {
		t.Fatalf("identities %v", c.Identities)
	}
	var webID, webLabels string
	for id, ls := range c.Identities {
		webID, webLabels = id, ls
	}
	// Cilium's label set for this pod (SanitizePodLabels and its default
	// filter), as Cilium's allocator cache reads it back.
	wantLabels := "k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=" + h.ns + ";" +
		"k8s:io.cilium.k8s.policy.cluster=" + h.cluster + ";k8s:io.cilium.k8s.policy.serviceaccount=default;" +
		"k8s:io.kubernetes.pod.namespace=" + h.ns + ";"
	if webLabels != wantLabels {
		t.Errorf("identity %s labels\n%s\nwant\n%s", webID, webLabels, wantLabels)
	}

	for _, ip := range []string{"10.7.1.10", "fd07:1::10"} {
		key := fmt.Sprintf("%s@%d", ip, h.id) // Cilium's ipcache key of a remote IP
		e, ok := c.IPCache[key]
		if !ok {
			t.Errorf("ipcache has no %s: %+v", key, c.IPCache)
			continue
		}
		if fmt.Sprint(e.ID) != webID || e.HostIP != "192.168.7.1" || e.Namespace != h.ns || e.Pod != "web-1" ||
			!slices.Equal(e.NamedPorts, []string{"http=8080/6"}) {
			t.Errorf("ipcache %s as Cilium's watcher programs it: %+v (identity %s)", key, e, webID)
		}
	}

	s, ok := c.Services[h.cluster+"/"+h.ns+"/web"]
	if !ok || len(c.Services) != 1 {
		t.Fatalf("services %+v", c.Services)
	}
	want := ciliuminterop.ServiceSummary{
		Shared: true, ClusterID: h.id,
		Frontends: map[string]map[string]string{"10.96.7.10": {"http": "TCP:80"}},
		Backends:  map[string]map[string]string{"10.7.1.10": {"http": "TCP:8080"}},
	}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("service as Cilium parsed it:\n%+v\nwant\n%+v", s, want)
	}
}
