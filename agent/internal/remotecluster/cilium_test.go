package remotecluster

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/ciliuminterop"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestCiliumClusterProgrammed has the agent read a Cilium 1.18 cluster:
// tools/ciliuminterop writes, with Cilium's own types, the state a Cilium
// cluster publishes (cluster config, heartbeat, dual-stack nodes with
// CiliumInternalIP and health IPs, identities with their value keys,
// ipcache entries with identity 0 and the reserved identities host, health
// and ingress, services with named and unnamed ports, shared and not, every
// canary, serviceexports included) and the agent must program every entry
// as Cilium would, refusing none.
func TestCiliumClusterProgrammed(t *testing.T) {
	ciliuminterop.Binary(t) // skip early when the tool is unavailable
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const id = 9
	c9 := startRemote(t, "cilium1", id)
	adminDir := t.TempDir()
	ac := c9.srv.AdminConfig()
	if err := kvstore.WriteConfigFiles(adminDir, "admin", ac.Endpoints, ac); err != nil {
		t.Fatal(err)
	}
	keys, err := ciliuminterop.Write(ctx, t, filepath.Join(adminDir, "admin"), "cilium1", id)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 25 {
		t.Errorf("Cilium's dump wrote %d keys, want 25: %v", len(keys), keys)
	}

	dir := t.TempDir()
	a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
	global := servicemerge.Annotations{Global: true, Shared: true}
	a.merger.SetLocalService(servicemerge.Name{Namespace: "shop", Name: "web"}, servicemerge.LocalService{
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd96::20")},
		Ports:       []servicemerge.ServicePort{{Name: "http", Proto: ipproto.TCP, Port: 80}, {Name: "dns", Proto: ipproto.UDP, Port: 53}},
		Annotations: global,
	})
	for _, s := range []struct{ name, ip string }{{"api", "10.96.0.21"}, {"internal", "10.96.0.22"}} {
		a.merger.SetLocalService(servicemerge.Name{Namespace: "shop", Name: s.name}, servicemerge.LocalService{
			ClusterIPs:  []netip.Addr{netip.MustParseAddr(s.ip)},
			Ports:       []servicemerge.ServicePort{{Proto: ipproto.TCP, Port: 80}},
			Annotations: global,
		})
	}
	c9.writeConfig(dir)

	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	n1, n1v6, n2 := addr("192.168.9.1"), addr("fd00:9::1"), addr("192.168.9.2")
	web, api := uint32(id<<16|256), uint32(id<<16|257)
	wantTunnels := map[netip.Prefix]netip.Addr{
		pfx("10.9.1.0/24"): n1, pfx("fd09:1::/64"): n1v6, pfx("10.9.2.0/24"): n2, pfx("10.9.12.0/24"): n2,
	}
	wantIPCache := map[netip.Prefix]datapath.IPCacheEntry{
		pfx("10.9.1.10/32"):   {Identity: web, TunnelEndpoint: n1},
		pfx("fd09:1::10/128"): {Identity: web, TunnelEndpoint: n1v6},
		pfx("10.9.2.10/32"):   {Identity: api, TunnelEndpoint: n2},
		pfx("10.9.12.7/32"):   {Identity: api, TunnelEndpoint: n2},
		pfx("10.9.1.11/32"):   {Identity: 0, TunnelEndpoint: n1},   // not resolved yet
		pfx("10.9.1.1/32"):    {Identity: 6, TunnelEndpoint: n1},   // host → remote-node
		pfx("fd09:1::1/128"):  {Identity: 6, TunnelEndpoint: n1v6}, // host → remote-node
		pfx("10.9.1.2/32"):    {Identity: 4, TunnelEndpoint: n1},   // health
		pfx("10.9.2.3/32"):    {Identity: 8, TunnelEndpoint: n2},   // ingress
	}
	fe := func(s string, p ipproto.Proto) datapath.Frontend {
		return datapath.Frontend{Addr: netip.MustParseAddrPort(s), Proto: p}
	}
	wantBackends := map[datapath.Frontend][]string{
		fe("10.96.0.20:80", ipproto.TCP): {"10.9.1.10:8080"},
		fe("[fd96::20]:80", ipproto.TCP): {"[fd09:1::10]:8080"},
		fe("10.96.0.20:53", ipproto.UDP): {"10.9.1.10:53"},
		fe("[fd96::20]:53", ipproto.UDP): {"[fd09:1::10]:53"},
		fe("10.96.0.21:80", ipproto.TCP): {"10.9.12.7:8080", "10.9.2.10:8080"}, // unnamed port
		fe("10.96.0.22:80", ipproto.TCP): nil,                                  // not shared: no remote backend
	}
	remoteBackends := func(st datapath.State, f datapath.Frontend) []string {
		var out []string
		for _, b := range st.Services[f].Backends {
			if b.ClusterID == id {
				out = append(out, b.Addr.String())
			}
		}
		slices.Sort(out)
		return out
	}
	st := await(t, a.dp, "the Cilium cluster programmed", func(st datapath.State) bool {
		tun, ipc := countCluster(st, id)
		return a.status("cilium1").Ready && tun == len(wantTunnels) && ipc == len(wantIPCache) &&
			len(remoteBackends(st, fe("10.96.0.21:80", ipproto.TCP))) == 2
	})

	for p, ip := range wantTunnels {
		if got := st.Tunnels[p]; got.NodeIP != ip || got.ClusterID != id {
			t.Errorf("tunnel %s: %+v, want node %s", p, got, ip)
		}
	}
	for p, want := range wantIPCache {
		got, ok := st.IPCache[p]
		if !ok || got.Identity != want.Identity || got.TunnelEndpoint != want.TunnelEndpoint || got.ClusterID != id {
			t.Errorf("ipcache %s: %+v (present %v), want identity %d via %s", p, got, ok, want.Identity, want.TunnelEndpoint)
		}
	}
	for f, want := range wantBackends {
		if got := remoteBackends(st, f); fmt.Sprint(got) != fmt.Sprint(want) && len(got)+len(want) > 0 {
			t.Errorf("remote backends of %s/%s: %v, want %v", f.Addr, f.Proto, got, want)
		}
	}
	s := a.status("cilium1")
	for _, k := range []struct {
		kind    string
		entries uint64
	}{{"nodes", 2}, {"identities", 2}, {"ipcache", 9}, {"services", 3}} {
		ks := s.kind(k.kind)
		if ks.Entries != k.entries || ks.Invalid != 0 {
			t.Errorf("%s: %d entries, %d invalid; want %d, 0", k.kind, ks.Entries, ks.Invalid, k.entries)
		}
	}
}
