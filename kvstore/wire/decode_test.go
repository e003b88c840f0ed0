package wire

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// decoders adapts every decoder to one signature for table tests.
var decoders = map[string]func(r Remote, key string, value []byte) (any, error){
	"node":     func(r Remote, k string, v []byte) (any, error) { return DecodeNode(r, k, v) },
	"service":  func(r Remote, k string, v []byte) (any, error) { return DecodeService(r, k, v) },
	"ip":       func(r Remote, k string, v []byte) (any, error) { return DecodeIPIdentityPair(r, k, v) },
	"identity": func(r Remote, k string, v []byte) (any, error) { return DecodeIdentity(r, k, v) },
	"config":   func(_ Remote, _ string, v []byte) (any, error) { return DecodeClusterConfig(v) },
}

func TestDecodeRejects(t *testing.T) {
	nodeKey := NodeKey("c1", "node1")
	svcKey := ServiceKey("c1", "shop", "web")
	ipKey := IPKey(netip.MustParseAddr("10.1.0.7"))
	idKey := IdentityKey(196915)
	replace := func(s, old, new string) string {
		if !strings.Contains(s, old) {
			panic("test value lacks " + old)
		}
		return strings.Replace(s, old, new, 1)
	}
	tests := []struct {
		name    string
		decoder string
		remote  Remote
		key     string
		value   string
		want    error
	}{
		// too large and malformed
		{"node too large", "node", testRemote, nodeKey, strings.Repeat(" ", MaxNodeValueSize+1), ErrTooLarge},
		{"service too large", "service", testRemote, svcKey, strings.Repeat(" ", MaxServiceValueSize+1), ErrTooLarge},
		{"ip too large", "ip", testRemote, ipKey, strings.Repeat(" ", MaxValueSize+1), ErrTooLarge},
		{"identity too large", "identity", testRemote, idKey, strings.Repeat("k", MaxValueSize+1), ErrTooLarge},
		{"config too large", "config", testRemote, "", strings.Repeat(" ", MaxValueSize+1), ErrTooLarge},
		{"node not JSON", "node", testRemote, nodeKey, `{"Name":`, ErrMalformed},
		{"node trailing garbage", "node", testRemote, nodeKey, goldenNodeFull + `x`, ErrMalformed},
		{"node wrong type", "node", testRemote, nodeKey, replace(goldenNodeFull, `"ClusterID":3`, `"ClusterID":"3"`), ErrMalformed},
		{"node encryption key overflow", "node", testRemote, nodeKey, replace(goldenNodeFull, `"EncryptionKey":2`, `"EncryptionKey":256`), ErrMalformed},
		{"node bad IP", "node", testRemote, nodeKey, replace(goldenNodeFull, `"192.168.1.10"`, `"192.168.1.300"`), ErrMalformed},
		{"node non-canonical mask", "node", testRemote, nodeKey, replace(goldenNodeFull, `"////AA=="`, `"//8A/w=="`), ErrMalformed},
		{"node v6 mask on v4", "node", testRemote, nodeKey, replace(goldenNodeFull, `"////AA=="`, `"//////////////////8AAA=="`), ErrMalformed},
		{"service null", "service", testRemote, svcKey, `null`, ErrWrongCluster},
		{"service not JSON", "service", testRemote, svcKey, `[]`, ErrMalformed},
		{"service port overflow", "service", testRemote, svcKey, replace(goldenService, `"Port":80}`, `"Port":65536}`), ErrMalformed},
		{"ip not JSON", "ip", testRemote, ipKey, `nope`, ErrMalformed},
		{"config not JSON", "config", testRemote, "", `{"id":-1}`, ErrMalformed},

		// key does not match the value
		{"node name differs from key", "node", testRemote, NodeKey("c1", "node9"), goldenNodeFull, ErrKeyMismatch},
		{"node key of other kind", "node", testRemote, svcKey, goldenNodeFull, ErrKeyMismatch},
		{"service name differs", "service", testRemote, ServiceKey("c1", "shop", "api"), goldenService, ErrKeyMismatch},
		{"service namespace differs", "service", testRemote, ServiceKey("c1", "prod", "web"), goldenService, ErrKeyMismatch},
		{"ip differs from key", "ip", testRemote, IPKey(netip.MustParseAddr("10.1.0.8")), goldenIPPod, ErrKeyMismatch},
		{"ip cidr under host key", "ip", testRemote, IPKey(netip.MustParseAddr("10.3.0.0")), goldenIPCIDR, ErrKeyMismatch},
		{"ip non-canonical key", "ip", testRemote, "cilium/state/ip/v1/default/010.1.0.7", goldenIPPod, ErrKeyMismatch},
		{"identity key not numeric", "identity", testRemote, "cilium/state/identities/v1/id/x", goldenIdentity, ErrKeyMismatch},

		// wrong cluster
		{"node of other cluster", "node", testRemote, NodeKey("c2", "node1"), replace(goldenNodeFull, `"Cluster":"c1"`, `"Cluster":"c2"`), ErrWrongCluster},
		{"node value says other cluster", "node", testRemote, nodeKey, replace(goldenNodeFull, `"Cluster":"c1"`, `"Cluster":"c2"`), ErrWrongCluster},
		{"node cache key of other cluster", "node", testRemote, CachedNodeKey("c2", "node1"), goldenNodeFull, ErrWrongCluster},
		{"service value says other cluster", "service", testRemote, svcKey, replace(goldenService, `"cluster":"c1"`, `"cluster":"c2"`), ErrWrongCluster},
		{"ip cache of other cluster", "ip", testRemote, CachedIPKey("c2", netip.MustParseAddr("10.1.0.7")), goldenIPPod, ErrWrongCluster},
		{"identity labels of other cluster", "identity", testRemote, idKey, replace(goldenIdentity, "cluster=c1", "cluster=c2"), ErrWrongCluster},
		{"identity without cluster label", "identity", testRemote, idKey, `k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;`, ErrWrongCluster},
		{"identity cache of other cluster", "identity", testRemote, CachedIdentityKey("c2", 196915), goldenIdentity, ErrWrongCluster},

		// cluster ID
		{"node cluster ID differs", "node", testRemote, nodeKey, replace(goldenNodeFull, `"ClusterID":3`, `"ClusterID":4`), ErrClusterIDMismatch},
		{"service cluster ID differs", "service", testRemote, svcKey, replace(goldenService, `"clusterID":3`, `"clusterID":0`), ErrClusterIDMismatch},

		// identity range
		{"identity of cluster 4", "identity", testRemote, IdentityKey(4<<16 | 307), goldenIdentity, ErrIdentityOutOfRange},
		{"identity reserved", "identity", testRemote, IdentityKey(2), goldenIdentity, ErrIdentityOutOfRange},
		{"identity with 511 shift", "identity", Remote{Name: "c1", ID: 3, MaxConnectedClusters: 511}, idKey, goldenIdentity, ErrIdentityOutOfRange},
		{"ip identity of cluster 4", "ip", testRemote, ipKey, replace(goldenIPPod, `"ID":196915`, `"ID":262400`), ErrIdentityOutOfRange},

		// other invalid values
		{"node empty name", "node", testRemote, "cilium/state/nodes/v1/c1/x", `{"Name":"","Cluster":"c1","ClusterID":3}`, ErrKeyMismatch},
		{"node v6 in IPv4AllocCIDR", "node", testRemote, nodeKey, replace(goldenNodeFull, `{"IP":"10.1.0.0","Mask":"////AA=="}`, `"fd00::/64"`), ErrInvalid},
		{"node null secondary CIDR", "node", testRemote, nodeKey, replace(goldenNodeFull, `[{"IP":"10.2.0.0","Mask":"//8AAA=="}]`, `[null]`), ErrInvalid},
		{"node v6 health IP in v4 field", "node", testRemote, nodeKey, replace(goldenNodeFull, `"IPv4HealthIP":"10.1.0.5"`, `"IPv4HealthIP":"fd00::5"`), ErrInvalid},
		{"node IP with zone", "node", testRemote, nodeKey, replace(goldenNodeFull, `"fd00::10"`, `"fe80::1%eth0"`), ErrInvalid},
		{"node address without type", "node", testRemote, nodeKey, replace(goldenNodeFull, `"Type":"InternalIP"`, `"Type":""`), ErrInvalid},
		{"node empty IP", "node", testRemote, nodeKey, replace(goldenNodeFull, `"192.168.1.10"`, `""`), ErrInvalid},
		{"service port 0", "service", testRemote, svcKey, replace(goldenService, `"Port":80}`, `"Port":0}`), ErrInvalid},
		{"service null port", "service", testRemote, svcKey, replace(goldenService, `{"Protocol":"TCP","Port":80}`, `null`), ErrInvalid},
		{"service protocol ICMP", "service", testRemote, svcKey, replace(goldenService, `"Protocol":"TCP","Port":80`, `"Protocol":"ICMP","Port":80`), ErrInvalid},
		{"service bad backend IP", "service", testRemote, svcKey, replace(goldenService, `"backends":{"10.1.0.7"`, `"backends":{"10.1.0.x"`), ErrInvalid},
		{"service non-canonical IPv6", "service", testRemote, svcKey, replace(goldenService, `"fd00:1::7":`, `"FD00:1::7":`), ErrInvalid},
		{"service zoned frontend", "service", testRemote, svcKey, replace(goldenService, `"10.96.0.10":`, `"fe80::1%eth0":`), ErrInvalid},
		{"service bad hostname key", "service", testRemote, svcKey, replace(goldenService, `"hostnames":{"10.1.0.7"`, `"hostnames":{"web-0"`), ErrInvalid},
		{"service with default max connected", "service", Remote{Name: "c1", ID: 3}, svcKey, goldenService, nil},
		{"ip identity 0 (not resolved yet)", "ip", testRemote, ipKey, replace(goldenIPPod, `"ID":196915`, `"ID":0`), nil},
		{"ip reserved host", "ip", testRemote, ipKey, replace(goldenIPPod, `"ID":196915`, `"ID":1`), nil},
		{"ip last reserved", "ip", testRemote, ipKey, replace(goldenIPPod, `"ID":196915`, `"ID":255`), nil},
		{"ip identity of another cluster", "ip", testRemote, ipKey, replace(goldenIPPod, `"ID":196915`, `"ID":256`), ErrIdentityOutOfRange},
		{"ip identity above 24 bits", "ip", testRemote, ipKey, replace(goldenIPPod, `"ID":196915`, `"ID":16777216`), ErrInvalid},
		{"ip empty IP", "ip", testRemote, ipKey, replace(goldenIPPod, `"IP":"10.1.0.7"`, `"IP":""`), ErrInvalid},
		{"ip mask wrong family", "ip", testRemote, IPPrefixKey(netip.MustParsePrefix("10.3.0.0/16")), replace(goldenIPCIDR, `"//8AAA=="`, `"//////////////////8AAA=="`), ErrInvalid},
		{"ip named port 0", "ip", testRemote, ipKey, replace(goldenIPPod, `"Port":8080`, `"Port":0`), ErrInvalid},
		{"ip named port protocol", "ip", testRemote, ipKey, replace(goldenIPPod, `"Protocol":"TCP"`, `"Protocol":"tcp"`), ErrInvalid},
		{"ip named port no name", "ip", testRemote, ipKey, replace(goldenIPPod, `"Name":"http"`, `"Name":""`), ErrInvalid},
		{"ip 4in6", "ip", testRemote, "cilium/state/ip/v1/default/::ffff:10.1.0.7", replace(goldenIPPod, `"IP":"10.1.0.7"`, `"IP":"::ffff:10.1.0.7"`), ErrInvalid},
		{"identity no final ;", "identity", testRemote, idKey, strings.TrimSuffix(goldenIdentity, ";"), ErrInvalid},
		{"identity no source", "identity", testRemote, idKey, "app=web;" + goldenIdentity, ErrInvalid},
		{"identity no =", "identity", testRemote, idKey, "k8s:app;" + goldenIdentity, ErrInvalid},
		{"identity duplicate key", "identity", testRemote, idKey, "container:app=x;" + goldenIdentity, ErrInvalid},
		{"identity empty", "identity", testRemote, idKey, "", ErrWrongCluster},
		{"config id 0", "config", testRemote, "", `{"capabilities":{"syncedCanaries":true}}`, ErrInvalidClusterID},
		{"config id above 255", "config", testRemote, "", `{"id":256,"capabilities":{}}`, ErrInvalidClusterID},
		{"config id 300 with 511", "config", testRemote, "", `{"id":300,"capabilities":{"maxConnectedClusters":511}}`, nil},
		{"config max 256", "config", testRemote, "", `{"id":3,"capabilities":{"maxConnectedClusters":256}}`, ErrInvalidMaxConnectedClusters},
		{"config empty object", "config", testRemote, "", `{}`, ErrInvalid},

		// the remote itself
		{"remote id 0", "node", Remote{Name: "c1"}, nodeKey, goldenNodeFull, ErrInvalidClusterID},
		{"remote bad name", "node", Remote{Name: "C1", ID: 3}, nodeKey, goldenNodeFull, ErrInvalidClusterName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decoders[tt.decoder](tt.remote, tt.key, []byte(tt.value))
			switch {
			case tt.want == nil && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestMarshalDecodeRoundTrip checks that what writers encode is what readers
// accept, unchanged.
func TestMarshalDecodeRoundTrip(t *testing.T) {
	tr := true
	r511 := Remote{Name: "eu-1", ID: 300, MaxConnectedClusters: 511}
	id511, _ := MakeIdentity(300, 4000, 511)
	tests := []struct {
		name   string
		remote Remote
		key    string
		value  any
		encode func() ([]byte, error)
		decode func(r Remote, key string, b []byte) (any, error)
	}{
		{"node full", testRemote, NodeKey("c1", "node1"), goldenNodeFullValue(),
			func() ([]byte, error) { return MarshalNode(goldenNodeFullValue()) }, decoders["node"]},
		{"node in 511 mesh", r511, NodeKey("eu-1", "n"), Node{Name: "n", Cluster: "eu-1", ClusterID: 300, IPAddresses: []NodeAddress{}, Labels: map[string]string{}},
			func() ([]byte, error) {
				return MarshalNode(Node{Name: "n", Cluster: "eu-1", ClusterID: 300, IPAddresses: []NodeAddress{}, Labels: map[string]string{}})
			}, decoders["node"]},
		{"service", testRemote, ServiceKey("c1", "shop", "web"), goldenServiceValue(),
			func() ([]byte, error) { return MarshalService(goldenServiceValue()) }, decoders["service"]},
		{"ipcache v6 cidr", testRemote, IPPrefixKey(netip.MustParsePrefix("fd00:3::/64")),
			IPIdentityPair{IP: netip.MustParseAddr("fd00:3::"), Mask: net.CIDRMask(64, 128), ID: 5},
			func() ([]byte, error) {
				return MarshalIPIdentityPair(IPIdentityPair{IP: netip.MustParseAddr("fd00:3::"), Mask: net.CIDRMask(64, 128), ID: 5})
			}, decoders["ip"]},
		{"ipcache in 511 mesh", r511, IPKey(netip.MustParseAddr("10.9.0.1")),
			IPIdentityPair{IP: netip.MustParseAddr("10.9.0.1"), HostIP: netip.MustParseAddr("192.168.9.1"), ID: id511},
			func() ([]byte, error) {
				return MarshalIPIdentityPair(IPIdentityPair{IP: netip.MustParseAddr("10.9.0.1"), HostIP: netip.MustParseAddr("192.168.9.1"), ID: id511})
			}, decoders["ip"]},
		{"identity", testRemote, IdentityKey(196915), goldenIdentityValue(),
			func() ([]byte, error) { return MarshalIdentity(goldenIdentityValue()) }, decoders["identity"]},
		{"cluster config", testRemote, "", ClusterConfig{ID: 300, Capabilities: Capabilities{SyncedCanaries: true, Cached: true, MaxConnectedClusters: 511, ServiceExportsEnabled: &tr}},
			func() ([]byte, error) {
				return MarshalClusterConfig(ClusterConfig{ID: 300, Capabilities: Capabilities{SyncedCanaries: true, Cached: true, MaxConnectedClusters: 511, ServiceExportsEnabled: &tr}})
			}, decoders["config"]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := tt.decode(tt.remote, tt.key, b)
			if err != nil {
				t.Fatalf("decoder refuses what the writer wrote: %v\n%s", err, b)
			}
			if !reflect.DeepEqual(got, tt.value) {
				t.Errorf("round trip changed the value\n got: %#v\nwant: %#v", got, tt.value)
			}
		})
	}
}

func TestMarshalRefuses(t *testing.T) {
	tests := []struct {
		name string
		fn   func() ([]byte, error)
		want error
	}{
		{"node without name", func() ([]byte, error) { return MarshalNode(Node{Cluster: "c1", ClusterID: 3}) }, ErrInvalid},
		{"node with bad cluster", func() ([]byte, error) { return MarshalNode(Node{Name: "n", Cluster: "C1", ClusterID: 3}) }, ErrInvalid},
		{"node too large", func() ([]byte, error) {
			return MarshalNode(Node{Name: "n", Cluster: "c1", ClusterID: 3, Annotations: map[string]string{"a": strings.Repeat("x", MaxNodeValueSize)}})
		}, ErrTooLarge},
		{"service with port 0", func() ([]byte, error) {
			return MarshalService(ClusterService{Cluster: "c1", Namespace: "a", Name: "b", Backends: map[string]Ports{"10.0.0.1": {"": {Protocol: TCP}}}})
		}, ErrInvalid},
		{"ipcache without IP", func() ([]byte, error) {
			return MarshalIPIdentityPair(IPIdentityPair{ID: 256})
		}, ErrInvalid},
		{"ipcache identity above 24 bits", func() ([]byte, error) {
			return MarshalIPIdentityPair(IPIdentityPair{IP: netip.MustParseAddr("10.0.0.1"), ID: MaxIdentity + 1})
		}, ErrInvalid},
		{"identity without cluster label", func() ([]byte, error) {
			return MarshalIdentity(Identity{ID: 70000, Labels: Labels{{Source: "k8s", Key: "app", Value: "x"}}})
		}, ErrInvalid},
		{"identity unsorted", func() ([]byte, error) {
			return MarshalIdentity(Identity{ID: 70000, Labels: Labels{{Source: "k8s", Key: ClusterLabelKey, Value: "c1"}, {Source: "k8s", Key: "app", Value: "x"}}})
		}, ErrInvalid},
		{"cluster config id 0", func() ([]byte, error) { return MarshalClusterConfig(ClusterConfig{}) }, ErrInvalidClusterID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.fn(); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestClusterConfigCompatible(t *testing.T) {
	tests := []struct {
		name     string
		cfg      ClusterConfig
		localID  uint32
		localMax int
		want     error
	}{
		{"same max", ClusterConfig{ID: 3, Capabilities: Capabilities{MaxConnectedClusters: 255}}, 1, 255, nil},
		{"absent max means 255", ClusterConfig{ID: 3}, 1, 255, nil},
		{"absent max against 511", ClusterConfig{ID: 3}, 1, 511, ErrMaxConnectedClustersMismatch},
		{"511 against 255", ClusterConfig{ID: 3, Capabilities: Capabilities{MaxConnectedClusters: 511}}, 1, 255, ErrMaxConnectedClustersMismatch},
		{"own ID", ClusterConfig{ID: 3}, 3, 255, ErrInvalidClusterID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Compatible(tt.localID, tt.localMax)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRemoteIPCacheIdentity(t *testing.T) {
	for _, tt := range []struct {
		name   string
		in     uint32
		wanted uint32
	}{
		{"unknown", IdentityUnknown, IdentityUnknown},
		{"host is a remote node", IdentityHost, IdentityRemoteNode},
		{"world", 2, 2},
		{"remote-node", IdentityRemoteNode, IdentityRemoteNode},
		{"cluster identity", 3<<16 | 307, 3<<16 | 307},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := RemoteIPCacheIdentity(tt.in); got != tt.wanted {
				t.Errorf("RemoteIPCacheIdentity(%d) = %d, want %d", tt.in, got, tt.wanted)
			}
		})
	}
}
