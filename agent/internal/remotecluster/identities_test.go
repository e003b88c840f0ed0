package remotecluster

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// identitySink records the identities handed to the policy engine and,
// per identity, the named ports of its endpoints ("name=port/proto" per
// endpoint, counted).
type identitySink struct {
	mu    sync.Mutex
	ids   map[uint32]string
	ports map[uint32]map[string]int
}

func (s *identitySink) UpdateEndpointPorts(oldID uint32, old []wire.NamedPort, curID uint32, cur []wire.NamedPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range []struct {
		id    uint32
		ports []wire.NamedPort
		n     int
	}{{oldID, old, -1}, {curID, cur, 1}} {
		if u.id == 0 {
			continue
		}
		var parts []string
		for _, p := range u.ports {
			parts = append(parts, fmt.Sprintf("%s=%d/%s", p.Name, p.Port, p.Protocol))
		}
		k := strings.Join(parts, ",")
		if s.ports[u.id] == nil {
			s.ports[u.id] = map[string]int{}
		}
		if s.ports[u.id][k] += u.n; s.ports[u.id][k] == 0 {
			delete(s.ports[u.id], k)
		}
		if len(s.ports[u.id]) == 0 {
			delete(s.ports, u.id)
		}
	}
}

func (s *identitySink) endpointPorts() map[uint32]map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[uint32]map[string]int{}
	for id, m := range s.ports {
		out[id] = maps.Clone(m)
	}
	return out
}

func (s *identitySink) UpsertIdentityLabels(id uint32, ls selector.Labels) {
	s.mu.Lock()
	s.ids[id] = ls.String()
	s.mu.Unlock()
}

func (s *identitySink) DeleteIdentity(id uint32) {
	s.mu.Lock()
	delete(s.ids, id)
	s.mu.Unlock()
}

func (s *identitySink) get() map[uint32]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uint32]string, len(s.ids))
	for k, v := range s.ids {
		out[k] = v
	}
	return out
}

// TestIdentitiesToPolicy: a remote's valid identities reach Config.Identities
// (an out-of-range one does not), and removing the remote's config deletes
// them.
func TestIdentitiesToPolicy(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.identityEntry(300)
	c2.identityEntry(301)
	c2.put(wire.IdentityKey(3<<16|300), []byte("k8s:io.cilium.k8s.policy.cluster=c3;")) // another cluster's range
	c2.canaries()
	sink := &identitySink{ids: map[uint32]string{}, ports: map[uint32]map[string]int{}}
	cfg := testConfig(dir, t.TempDir())
	cfg.Identities = sink
	startAgent(t, cfg, memory.New(), nil)
	c2.writeConfig(dir)

	want := "k8s:app=web,k8s:io.cilium.k8s.policy.cluster=c2" // the engine's form of the labels
	testwait.Until(t, 20*time.Second, "c2's identities", func() (bool, string) {
		got := sink.get()
		return len(got) == 2 && got[c2.identity(300)] == want && got[c2.identity(301)] == want, ""
	})
	c2.del(wire.IdentityKey(c2.identity(301)))
	testwait.Until(t, 20*time.Second, "deleted identity", func() (bool, string) {
		_, ok := sink.get()[c2.identity(301)]
		return !ok, ""
	})
	if err := os.Remove(filepath.Join(dir, "c2")); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, 20*time.Second, "identities drained with the config", func() (bool, string) { return len(sink.get()) == 0, "" })
}

// TestEndpointPortsToPolicy: the identity and named ports of every remote
// pod's ipcache entry reach Config.Identities as they change, a CIDR entry
// is no pod, and removing the remote's config withdraws them all.
func TestEndpointPortsToPolicy(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.node(0)
	pod := func(i int, local uint32, ports ...wire.NamedPort) {
		ip := netip.MustParseAddr(podIP(2, i))
		c2.put(wire.IPKey(ip), must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{
			IP: ip, HostIP: netip.MustParseAddr(nodeIP(2, 0)), ID: c2.identity(local), NamedPorts: ports})))
	}
	http := wire.NamedPort{Name: "http", Port: 8080, Protocol: wire.TCP}
	pod(1, 300, http)
	pod(2, 300, http)
	pod(3, 301)
	cidr := netip.MustParsePrefix(nodeCIDR(2, 0))
	c2.put(wire.IPPrefixKey(cidr), must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{
		IP: cidr.Addr(), Mask: net.CIDRMask(cidr.Bits(), 32), HostIP: netip.MustParseAddr(nodeIP(2, 0)), ID: c2.identity(302)})))
	c2.canaries()
	sink := &identitySink{ids: map[uint32]string{}, ports: map[uint32]map[string]int{}}
	cfg := testConfig(dir, t.TempDir())
	cfg.Identities = sink
	startAgent(t, cfg, memory.New(), nil)
	c2.writeConfig(dir)

	expect := func(what string, want map[uint32]map[string]int) {
		t.Helper()
		testwait.Until(t, 20*time.Second, what, func() (bool, string) {
			got := sink.endpointPorts()
			return maps.EqualFunc(got, want, maps.Equal), fmt.Sprint(got)
		})
	}
	expect("the pods' named ports", map[uint32]map[string]int{
		c2.identity(300): {"http=8080/TCP": 2}, c2.identity(301): {"": 1}})
	pod(2, 300, wire.NamedPort{Name: "http", Port: 9090, Protocol: wire.TCP})
	pod(3, 300)
	expect("changed ports and identity", map[uint32]map[string]int{
		c2.identity(300): {"http=8080/TCP": 1, "http=9090/TCP": 1, "": 1}})
	c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 1))))
	expect("deleted pod", map[uint32]map[string]int{c2.identity(300): {"http=9090/TCP": 1, "": 1}})
	if err := os.Remove(filepath.Join(dir, "c2")); err != nil {
		t.Fatal(err)
	}
	expect("drained with the config", map[uint32]map[string]int{})
}
