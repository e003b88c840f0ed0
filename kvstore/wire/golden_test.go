package wire

import (
	"net"
	"net/netip"
	"reflect"
	"testing"
)

// Golden values: the exact bytes Cilium ClusterMesh writes for these objects.
// Field order is Cilium's struct order; omitted fields are Cilium's omitempty
// choices. They seed the fuzz corpora too.
const (
	goldenNodeFull = `{"Name":"node1","Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"192.168.1.10"},{"Type":"CiliumInternalIP","IP":"10.1.0.1"},{"Type":"InternalIP","IP":"fd00::10"}],` +
		`"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":[{"IP":"10.2.0.0","Mask":"//8AAA=="}],` +
		`"IPv6AllocCIDR":{"IP":"fd00:1::","Mask":"//////////////////8AAA=="},"IPv6SecondaryAllocCIDRs":null,` +
		`"IPv4HealthIP":"10.1.0.5","IPv6HealthIP":"fd00:1::5","IPv4IngressIP":"10.1.0.6","IPv6IngressIP":"",` +
		`"ClusterID":3,"Source":"kvstore","EncryptionKey":2,"Labels":{"kubernetes.io/hostname":"node1"},"Annotations":{"a":"b"},` +
		`"NodeIdentity":0,"WireguardPubKey":"w6iRLb6jG3aI4GZ/3c5EkQpp6kRmGmRC02pFTtCmcm4=","BootID":"4e5d27a0-0b8a-4b0e-9a4a-3f5d9a6f0b1c"}`

	goldenNodeMinimal = `{"Name":"node2","Cluster":"c1","IPAddresses":null,"IPv4AllocCIDR":null,"IPv4SecondaryAllocCIDRs":null,` +
		`"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"",` +
		`"ClusterID":3,"Source":"","EncryptionKey":0,"Labels":null,"Annotations":null,"NodeIdentity":0,"WireguardPubKey":"","BootID":""}`

	goldenService = `{"cluster":"c1","namespace":"shop","name":"web",` +
		`"frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},` +
		`"backends":{"10.1.0.7":{"http":{"Protocol":"TCP","Port":8080}},"fd00:1::7":{"http":{"Protocol":"TCP","Port":8080}}},` +
		`"hostnames":{"10.1.0.7":"web-0"},"zones":{"10.1.0.7":{"zone":"z1","forZones":[{"name":"z1"}]}},` +
		`"labels":{"app":"web"},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":3}`

	goldenServiceEmpty = `{"cluster":"c1","namespace":"shop","name":"db","frontends":{},"backends":{},"labels":{},"selector":{},` +
		`"includeExternal":false,"shared":true,"clusterID":3}`

	goldenIPPod = `{"IP":"10.1.0.7","Mask":null,"HostIP":"192.168.1.10","ID":196915,"Key":0,"Metadata":"",` +
		`"K8sNamespace":"shop","K8sPodName":"web-0","K8sServiceAccount":"web","NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"}]}`

	goldenIPCIDR = `{"IP":"10.3.0.0","Mask":"//8AAA==","HostIP":"","ID":196916,"Key":1,"Metadata":"cilium-global"}`

	goldenIdentity = `k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;`

	goldenClusterConfig = `{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}`
)

var testRemote = Remote{Name: "c1", ID: 3, MaxConnectedClusters: 255}

func goldenNodeFullValue() Node {
	return Node{
		Name:    "node1",
		Cluster: "c1",
		IPAddresses: []NodeAddress{
			{Type: NodeInternalIP, IP: netip.MustParseAddr("192.168.1.10")},
			{Type: NodeCiliumInternalIP, IP: netip.MustParseAddr("10.1.0.1")},
			{Type: NodeInternalIP, IP: netip.MustParseAddr("fd00::10")},
		},
		IPv4AllocCIDR:           MustParseCIDR("10.1.0.0/24"),
		IPv4SecondaryAllocCIDRs: []CIDR{MustParseCIDR("10.2.0.0/16")},
		IPv6AllocCIDR:           MustParseCIDR("fd00:1::/112"),
		IPv4HealthIP:            netip.MustParseAddr("10.1.0.5"),
		IPv6HealthIP:            netip.MustParseAddr("fd00:1::5"),
		IPv4IngressIP:           netip.MustParseAddr("10.1.0.6"),
		ClusterID:               3,
		Source:                  "kvstore",
		EncryptionKey:           2,
		Labels:                  map[string]string{"kubernetes.io/hostname": "node1"},
		Annotations:             map[string]string{"a": "b"},
		WireguardPubKey:         "w6iRLb6jG3aI4GZ/3c5EkQpp6kRmGmRC02pFTtCmcm4=",
		BootID:                  "4e5d27a0-0b8a-4b0e-9a4a-3f5d9a6f0b1c",
	}
}

func goldenServiceValue() ClusterService {
	http8080 := Ports{"http": {Protocol: TCP, Port: 8080}}
	return ClusterService{
		Cluster:         "c1",
		Namespace:       "shop",
		Name:            "web",
		Frontends:       map[string]Ports{"10.96.0.10": {"http": {Protocol: TCP, Port: 80}}},
		Backends:        map[string]Ports{"10.1.0.7": http8080, "fd00:1::7": http8080},
		Hostnames:       map[string]string{"10.1.0.7": "web-0"},
		Zones:           map[string]BackendZone{"10.1.0.7": {Zone: "z1", ForZones: []ForZone{{Name: "z1"}}}},
		Labels:          map[string]string{"app": "web"},
		Selector:        map[string]string{"app": "web"},
		IncludeExternal: true,
		Shared:          true,
		ClusterID:       3,
	}
}

func goldenIPPodValue() IPIdentityPair {
	return IPIdentityPair{
		IP:                netip.MustParseAddr("10.1.0.7"),
		HostIP:            netip.MustParseAddr("192.168.1.10"),
		ID:                196915,
		K8sNamespace:      "shop",
		K8sPodName:        "web-0",
		K8sServiceAccount: "web",
		NamedPorts:        []NamedPort{{Name: "http", Port: 8080, Protocol: TCP}},
	}
}

func goldenIdentityValue() Identity {
	return Identity{ID: 196915, Labels: Labels{
		{Source: "k8s", Key: "app", Value: "web"},
		{Source: "k8s", Key: ClusterLabelKey, Value: "c1"},
		{Source: "k8s", Key: NamespaceLabelKey, Value: "shop"},
	}}
}

func TestGoldenWrite(t *testing.T) {
	f := false
	tests := []struct {
		name    string
		marshal func() ([]byte, error)
		want    string
	}{
		{"node full", func() ([]byte, error) { return MarshalNode(goldenNodeFullValue()) }, goldenNodeFull},
		{"node minimal", func() ([]byte, error) { return MarshalNode(Node{Name: "node2", Cluster: "c1", ClusterID: 3}) }, goldenNodeMinimal},
		{"service", func() ([]byte, error) { return MarshalService(goldenServiceValue()) }, goldenService},
		{"service with nil maps writes {}", func() ([]byte, error) {
			return MarshalService(ClusterService{Cluster: "c1", Namespace: "shop", Name: "db", Shared: true, ClusterID: 3})
		}, goldenServiceEmpty},
		{"ipcache pod", func() ([]byte, error) { return MarshalIPIdentityPair(goldenIPPodValue()) }, goldenIPPod},
		{"ipcache cidr", func() ([]byte, error) {
			return MarshalIPIdentityPair(IPIdentityPair{IP: netip.MustParseAddr("10.3.0.0"), Mask: net.CIDRMask(16, 32), ID: 196916, Key: 1, Metadata: "cilium-global"})
		}, goldenIPCIDR},
		{"identity", func() ([]byte, error) { return MarshalIdentity(goldenIdentityValue()) }, goldenIdentity},
		{"cluster config", func() ([]byte, error) {
			return MarshalClusterConfig(ClusterConfig{ID: 3, Capabilities: Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255, ServiceExportsEnabled: &f}})
		}, goldenClusterConfig},
		{"cluster config without service exports", func() ([]byte, error) {
			return MarshalClusterConfig(ClusterConfig{ID: 7, Capabilities: Capabilities{SyncedCanaries: true, Cached: true, MaxConnectedClusters: 511}})
		}, `{"id":7,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":511}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.marshal()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("wrong bytes\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

func TestGoldenRead(t *testing.T) {
	f := false
	minimal := Node{Name: "node2", Cluster: "c1", ClusterID: 3}
	emptySvc := ClusterService{Cluster: "c1", Namespace: "shop", Name: "db", Shared: true, ClusterID: 3,
		Frontends: map[string]Ports{}, Backends: map[string]Ports{}, Labels: map[string]string{}, Selector: map[string]string{}}
	tests := []struct {
		name   string
		decode func() (any, error)
		want   any
	}{
		{"node full", func() (any, error) { return DecodeNode(testRemote, NodeKey("c1", "node1"), []byte(goldenNodeFull)) }, goldenNodeFullValue()},
		{"node minimal", func() (any, error) { return DecodeNode(testRemote, NodeKey("c1", "node2"), []byte(goldenNodeMinimal)) }, minimal},
		{"node with string CIDRs and unknown fields", func() (any, error) {
			return DecodeNode(testRemote, NodeKey("c1", "node1"), []byte(`{"Name":"node1","Cluster":"c1","ClusterID":3,`+
				`"IPv4AllocCIDR":"10.1.0.0/24","IPv6SecondaryAllocCIDRs":["fd00:2::/64"],"FutureField":{"x":1}}`))
		}, Node{Name: "node1", Cluster: "c1", ClusterID: 3, IPv4AllocCIDR: MustParseCIDR("10.1.0.0/24"),
			IPv6SecondaryAllocCIDRs: []CIDR{MustParseCIDR("fd00:2::/64")}}},
		{"node CIDRs with host bits are masked, as Cilium does", func() (any, error) {
			return DecodeNode(testRemote, NodeKey("c1", "node1"), []byte(`{"Name":"node1","Cluster":"c1","ClusterID":3,`+
				`"IPv4AllocCIDR":{"IP":"10.1.0.1","Mask":"////AA=="},"IPv6AllocCIDR":"fd00:1::1/64"}`))
		}, Node{Name: "node1", Cluster: "c1", ClusterID: 3, IPv4AllocCIDR: MustParseCIDR("10.1.0.0/24"),
			IPv6AllocCIDR: MustParseCIDR("fd00:1::/64")}},
		{"node IPv4-mapped address is unmapped, as Cilium does", func() (any, error) {
			return DecodeNode(testRemote, NodeKey("c1", "node1"), []byte(`{"Name":"node1","Cluster":"c1","ClusterID":3,`+
				`"IPAddresses":[{"Type":"InternalIP","IP":"::ffff:192.168.1.10"}]}`))
		}, Node{Name: "node1", Cluster: "c1", ClusterID: 3,
			IPAddresses: []NodeAddress{{Type: NodeInternalIP, IP: netip.MustParseAddr("192.168.1.10")}}}},
		{"node from kvstoremesh cache", func() (any, error) {
			return DecodeNode(testRemote, CachedNodeKey("c1", "node2"), []byte(goldenNodeMinimal))
		}, minimal},
		{"service", func() (any, error) {
			return DecodeService(testRemote, ServiceKey("c1", "shop", "web"), []byte(goldenService))
		}, goldenServiceValue()},
		{"service with null maps", func() (any, error) {
			return DecodeService(testRemote, ServiceKey("c1", "shop", "db"), []byte(`{"cluster":"c1","namespace":"shop","name":"db",`+
				`"frontends":null,"backends":null,"hostnames":{},"labels":null,"selector":null,"includeExternal":false,"shared":true,"clusterID":3}`))
		}, emptySvc},
		{"service empty", func() (any, error) {
			return DecodeService(testRemote, ServiceKey("c1", "shop", "db"), []byte(goldenServiceEmpty))
		}, emptySvc},
		{"ipcache pod", func() (any, error) {
			return DecodeIPIdentityPair(testRemote, IPKey(netip.MustParseAddr("10.1.0.7")), []byte(goldenIPPod))
		}, goldenIPPodValue()},
		{"ipcache cidr", func() (any, error) {
			return DecodeIPIdentityPair(testRemote, IPPrefixKey(netip.MustParsePrefix("10.3.0.0/16")), []byte(goldenIPCIDR))
		}, IPIdentityPair{IP: netip.MustParseAddr("10.3.0.0"), Mask: net.CIDRMask(16, 32), ID: 196916, Key: 1, Metadata: "cilium-global"}},
		{"ipcache reserved identity", func() (any, error) {
			return DecodeIPIdentityPair(testRemote, "cilium/cache/ip/v1/c1/fd00:1::2", []byte(`{"IP":"fd00:1::2","Mask":null,"HostIP":"fd00::10","ID":4,"Key":0,"Metadata":""}`))
		}, IPIdentityPair{IP: netip.MustParseAddr("fd00:1::2"), HostIP: netip.MustParseAddr("fd00::10"), ID: 4}},
		{"identity", func() (any, error) { return DecodeIdentity(testRemote, IdentityKey(196915), []byte(goldenIdentity)) }, goldenIdentityValue()},
		{"identity unsorted, from cache", func() (any, error) {
			return DecodeIdentity(testRemote, CachedIdentityKey("c1", 196915),
				[]byte(`k8s:io.kubernetes.pod.namespace=shop;k8s:io.cilium.k8s.policy.cluster=c1;k8s:app=web;`))
		}, goldenIdentityValue()},
		{"cluster config", func() (any, error) { return DecodeClusterConfig([]byte(goldenClusterConfig)) },
			ClusterConfig{ID: 3, Capabilities: Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255, ServiceExportsEnabled: &f}}},
		{"cluster config as in DESIGN.md, cached:false written", func() (any, error) {
			return DecodeClusterConfig([]byte(`{"id":3,"capabilities":{"syncedCanaries":true,"cached":false,"maxConnectedClusters":255,"serviceExportsEnabled":false}}`))
		}, ClusterConfig{ID: 3, Capabilities: Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255, ServiceExportsEnabled: &f}}},
		{"cluster config of Cilium 1.14 without capabilities max", func() (any, error) {
			return DecodeClusterConfig([]byte(`{"id":9,"capabilities":{"syncedCanaries":true}}`))
		}, ClusterConfig{ID: 9, Capabilities: Capabilities{SyncedCanaries: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.decode()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("wrong value\n got: %#v\nwant: %#v", got, tt.want)
			}
		})
	}
}
