package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path"
	"time"

	"github.com/cilium/cilium/pkg/cidr"
	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/identity"
	identityCache "github.com/cilium/cilium/pkg/identity/cache"
	"github.com/cilium/cilium/pkg/identity/key"
	"github.com/cilium/cilium/pkg/ipcache"
	"github.com/cilium/cilium/pkg/kvstore"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/loadbalancer"
	"github.com/cilium/cilium/pkg/node/addressing"
	nodeStore "github.com/cilium/cilium/pkg/node/store"
	nodeTypes "github.com/cilium/cilium/pkg/node/types"
	"github.com/cilium/cilium/pkg/source"
)

type writeConfig struct {
	EtcdConfig string
	Name       string
	ID         uint
}

// Dump is the list of keys write wrote, printed as JSON.
type Dump struct {
	Keys []string `json:"keys"`
}

// write stores, with Cilium's own types and kvstore client, the state a
// Cilium 1.18 cluster publishes: cluster config, heartbeat, nodes (dual
// stack, with CiliumInternalIP and health IPs), identities (id and value
// keys, as its kvstore allocator writes them), ipcache entries (pods on
// IPv4 and IPv6, an endpoint without identity yet (0), the host (1), health
// (4) and ingress (8) reserved identities), services (named and unnamed
// ports, shared and not shared) and every sync canary, serviceexports
// included.
func write(ctx context.Context, cfg writeConfig, out io.Writer) error {
	if cfg.EtcdConfig == "" {
		return fmt.Errorf("--etcd-config is required")
	}
	local := cmtypes.ClusterInfo{ID: uint32(cfg.ID), Name: cfg.Name, MaxConnectedClusters: 255}
	if err := local.InitClusterIDMax(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cl, errc := kvstore.NewClient(ctx, log, kvstore.EtcdBackendName, map[string]string{kvstore.EtcdOptionConfig: cfg.EtcdConfig},
		kvstore.ExtraOptions{NoLockQuorumCheck: true})
	if err := <-errc; err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer cl.Close()

	var dump Dump
	put := func(k string, v []byte) error {
		if err := cl.Update(ctx, k, v, false); err != nil {
			return fmt.Errorf("write %s: %w", k, err)
		}
		dump.Keys = append(dump.Keys, k)
		return nil
	}
	name, id := cfg.Name, uint32(cfg.ID)
	no := false
	ccfg, err := json.Marshal(cmtypes.CiliumClusterConfig{ID: id, Capabilities: cmtypes.CiliumClusterConfigCapabilities{
		SyncedCanaries: true, MaxConnectedClusters: 255, ServiceExportsEnabled: &no}})
	if err != nil {
		return err
	}
	now := []byte(time.Now().Format(time.RFC3339))
	if err := put(path.Join(kvstore.ClusterConfigPrefix, name), ccfg); err != nil {
		return err
	}
	if err := put(kvstore.HeartbeatPath, now); err != nil {
		return err
	}

	for _, n := range dumpNodes(name, id) {
		v, err := n.Marshal()
		if err != nil {
			return err
		}
		if err := put(path.Join(nodeStore.NodeStorePrefix, n.GetKeyName()), v); err != nil {
			return err
		}
	}

	web, api := identityFor(id, 256), identityFor(id, 257)
	for _, i := range []struct {
		id identity.NumericIdentity
		ls labels.Labels
	}{
		{web, labels.NewLabelsFromModel([]string{"k8s:app=web", "k8s:io.cilium.k8s.policy.cluster=" + name,
			"k8s:io.cilium.k8s.policy.serviceaccount=web", "k8s:io.kubernetes.pod.namespace=shop",
			"k8s:io.cilium.k8s.namespace.labels.team=blue", "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop"})},
		{api, labels.NewLabelsFromModel([]string{"k8s:app=api", "k8s:io.cilium.k8s.policy.cluster=" + name,
			"k8s:io.cilium.k8s.policy.serviceaccount=default", "k8s:io.kubernetes.pod.namespace=shop",
			"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop"})},
	} {
		gi := &key.GlobalIdentity{LabelArray: i.ls.LabelArray()}
		if err := put(path.Join(identityCache.IdentitiesPath, "id", i.id.String()), []byte(gi.GetKey())); err != nil {
			return err
		}
		if err := put(path.Join(identityCache.IdentitiesPath, "value", gi.GetKey(), "node1"), []byte(i.id.String())); err != nil {
			return err
		}
	}

	for _, p := range dumpIPCache(web, api) {
		v, err := p.Marshal()
		if err != nil {
			return err
		}
		if err := put(path.Join(ipcache.IPIdentitiesPath, ipcache.DefaultAddressSpace, p.GetKeyName()), v); err != nil {
			return err
		}
	}

	for _, s := range dumpServices(name, id) {
		v, err := s.Marshal()
		if err != nil {
			return err
		}
		if err := put(path.Join(serviceStore.ServiceStorePrefix, s.GetKeyName()), v); err != nil {
			return err
		}
	}

	for _, prefix := range []string{nodeStore.NodeStorePrefix, serviceStore.ServiceStorePrefix, identityCache.IdentitiesPath,
		ipcache.IPIdentitiesPath, serviceExportsPrefix} {
		if err := put(path.Join(kvstore.SyncedPrefix, name, prefix), now); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(dump)
}

func identityFor(clusterID, local uint32) identity.NumericIdentity {
	return identity.NumericIdentity(clusterID<<16 | local)
}

func dumpNodes(cluster string, id uint32) []nodeTypes.Node {
	return []nodeTypes.Node{
		{
			Name: "node1", Cluster: cluster, ClusterID: id, Source: source.CustomResource,
			IPAddresses: []nodeTypes.Address{
				{Type: addressing.NodeInternalIP, IP: net.ParseIP("192.168.9.1")},
				{Type: addressing.NodeInternalIP, IP: net.ParseIP("fd00:9::1")},
				{Type: addressing.NodeCiliumInternalIP, IP: net.ParseIP("10.9.1.1")},
				{Type: addressing.NodeCiliumInternalIP, IP: net.ParseIP("fd09:1::1")},
			},
			IPv4AllocCIDR: cidr.MustParseCIDR("10.9.1.0/24"),
			IPv6AllocCIDR: cidr.MustParseCIDR("fd09:1::/64"),
			IPv4HealthIP:  net.ParseIP("10.9.1.2"),
			IPv6HealthIP:  net.ParseIP("fd09:1::2"),
			Labels:        map[string]string{"kubernetes.io/hostname": "node1"},
		},
		{
			Name: "node2", Cluster: cluster, ClusterID: id, Source: source.CustomResource,
			IPAddresses: []nodeTypes.Address{
				{Type: addressing.NodeInternalIP, IP: net.ParseIP("192.168.9.2")},
				{Type: addressing.NodeExternalIP, IP: net.ParseIP("203.0.113.2")},
			},
			IPv4AllocCIDR:           cidr.MustParseCIDR("10.9.2.0/24"),
			IPv4SecondaryAllocCIDRs: []*cidr.CIDR{cidr.MustParseCIDR("10.9.12.0/24")},
		},
	}
}

func dumpIPCache(web, api identity.NumericIdentity) []identity.IPIdentityPair {
	host1, host2 := net.ParseIP("192.168.9.1"), net.ParseIP("192.168.9.2")
	host1v6 := net.ParseIP("fd00:9::1")
	ports := []identity.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}}
	return []identity.IPIdentityPair{
		{IP: net.ParseIP("10.9.1.10"), HostIP: host1, ID: web, K8sNamespace: "shop", K8sPodName: "web-1", NamedPorts: ports},
		{IP: net.ParseIP("fd09:1::10"), HostIP: host1v6, ID: web, K8sNamespace: "shop", K8sPodName: "web-1", NamedPorts: ports},
		{IP: net.ParseIP("10.9.2.10"), HostIP: host2, ID: api, K8sNamespace: "shop", K8sPodName: "api-1"},
		{IP: net.ParseIP("10.9.12.7"), HostIP: host2, ID: api, K8sNamespace: "shop", K8sPodName: "api-2"},
		// An endpoint whose identity is not resolved yet.
		{IP: net.ParseIP("10.9.1.11"), HostIP: host1, ID: identity.IdentityUnknown, K8sNamespace: "shop", K8sPodName: "new-1"},
		// The node's router (cilium_host) IP: reserved:host, seen remotely as remote-node.
		{IP: net.ParseIP("10.9.1.1"), HostIP: host1, ID: identity.ReservedIdentityHost},
		{IP: net.ParseIP("fd09:1::1"), HostIP: host1v6, ID: identity.ReservedIdentityHost},
		// Health endpoint and ingress IPs.
		{IP: net.ParseIP("10.9.1.2"), HostIP: host1, ID: identity.ReservedIdentityHealth},
		{IP: net.ParseIP("10.9.2.3"), HostIP: host2, ID: identity.ReservedIdentityIngress},
	}
}

func dumpServices(cluster string, id uint32) []serviceStore.ClusterService {
	l4 := func(p uint16) *loadbalancer.L4Addr { a := loadbalancer.NewL4Addr(loadbalancer.TCP, p); return &a }
	udp := func(p uint16) *loadbalancer.L4Addr { a := loadbalancer.NewL4Addr(loadbalancer.UDP, p); return &a }
	svc := func(ns, name string, shared bool) serviceStore.ClusterService {
		s := serviceStore.NewClusterService(name, ns)
		s.Cluster, s.ClusterID, s.Shared = cluster, id, shared
		s.Labels = map[string]string{"app": name}
		s.Selector = map[string]string{"app": name}
		return s
	}
	web := svc("shop", "web", true)
	web.Frontends = map[string]serviceStore.PortConfiguration{
		"10.96.9.10": {"http": l4(80), "dns": udp(53)},
		"fd96::9:10": {"http": l4(80), "dns": udp(53)},
	}
	web.Backends = map[string]serviceStore.PortConfiguration{
		"10.9.1.10":  {"http": l4(8080), "dns": udp(53)},
		"fd09:1::10": {"http": l4(8080), "dns": udp(53)},
	}
	api := svc("shop", "api", true)
	api.Frontends = map[string]serviceStore.PortConfiguration{"10.96.9.11": {"": l4(80)}}
	api.Backends = map[string]serviceStore.PortConfiguration{"10.9.2.10": {"": l4(8080)}, "10.9.12.7": {"": l4(8080)}}
	internal := svc("shop", "internal", false)
	internal.Frontends = map[string]serviceStore.PortConfiguration{"10.96.9.12": {"": l4(80)}}
	internal.Backends = map[string]serviceStore.PortConfiguration{"10.9.1.10": {"": l4(80)}}
	return []serviceStore.ClusterService{web, api, internal}
}
