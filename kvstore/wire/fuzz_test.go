package wire

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

// Fuzz targets for every decoder of untrusted remote values. Properties:
// a decoder never panics; when it accepts a value, the matching Marshal
// function encodes it and the decoder accepts those bytes again, giving an
// equal value. Re-encoding may only fail with ErrTooLarge: an accepted value
// close to the limit can grow when re-encoded (CIDRs in string form become
// objects, "<" becomes "\u003c").
//
// Run one with: go test -run '^$' -fuzz '^FuzzDecodeNode$' -fuzztime 60s ./kvstore/wire

func fuzzRemote(extended bool) Remote {
	if extended {
		return Remote{Name: "c1", ID: 3, MaxConnectedClusters: 511}
	}
	return testRemote
}

func checkRoundTrip[T any](t *testing.T, r Remote, key string, got T,
	marshal func(T) ([]byte, error), decode func(Remote, string, []byte) (T, error)) {
	t.Helper()
	b, err := marshal(got)
	if errors.Is(err, ErrTooLarge) {
		return
	}
	if err != nil {
		t.Fatalf("decoded value does not re-encode: %v\n%#v", err, got)
	}
	again, err := decode(r, key, b)
	if err != nil {
		t.Fatalf("re-encoded value is refused: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(again, got) {
		t.Fatalf("round trip changed the value\nfirst:  %#v\nsecond: %#v\nbytes: %s", got, again, b)
	}
}

func FuzzDecodeNode(f *testing.F) {
	f.Add(NodeKey("c1", "node1"), []byte(goldenNodeFull), false)
	f.Add(NodeKey("c1", "node2"), []byte(goldenNodeMinimal), false)
	f.Add(CachedNodeKey("c1", "node2"), []byte(goldenNodeMinimal), true)
	f.Add(NodeKey("c1", "node1"), []byte(`{"Name":"node1","Cluster":"c1","ClusterID":3,"IPv4AllocCIDR":"10.1.0.0/24","IPv6SecondaryAllocCIDRs":["fd00:2::/64"]}`), false)
	f.Fuzz(func(t *testing.T, key string, value []byte, extended bool) {
		r := fuzzRemote(extended)
		n, err := DecodeNode(r, key, value)
		if err != nil {
			return
		}
		checkRoundTrip(t, r, key, n, MarshalNode, DecodeNode)
	})
}

func FuzzDecodeService(f *testing.F) {
	f.Add(ServiceKey("c1", "shop", "web"), []byte(goldenService), false)
	f.Add(ServiceKey("c1", "shop", "db"), []byte(goldenServiceEmpty), false)
	f.Add(CachedServiceKey("c1", "shop", "db"), []byte(`{"cluster":"c1","namespace":"shop","name":"db","frontends":null,"backends":{"fd00::1":{"":{"Protocol":"SCTP","Port":9}}},"hostnames":{},"clusterID":3}`), true)
	f.Fuzz(func(t *testing.T, key string, value []byte, extended bool) {
		r := fuzzRemote(extended)
		s, err := DecodeService(r, key, value)
		if err != nil {
			return
		}
		checkRoundTrip(t, r, key, s, MarshalService, DecodeService)
	})
}

func FuzzDecodeIPIdentityPair(f *testing.F) {
	f.Add(IPKey(netip.MustParseAddr("10.1.0.7")), []byte(goldenIPPod), false)
	f.Add(IPPrefixKey(netip.MustParsePrefix("10.3.0.0/16")), []byte(goldenIPCIDR), false)
	f.Add("cilium/cache/ip/v1/c1/fd00:1::2", []byte(`{"IP":"fd00:1::2","Mask":null,"HostIP":"fd00::10","ID":4,"Key":0,"Metadata":""}`), false)
	f.Add(IPKey(netip.MustParseAddr("10.1.0.7")), []byte(`{"IP":"10.1.0.7","Mask":null,"HostIP":"192.168.1.10","ID":98611,"Key":0,"Metadata":""}`), true)
	f.Fuzz(func(t *testing.T, key string, value []byte, extended bool) {
		r := fuzzRemote(extended)
		p, err := DecodeIPIdentityPair(r, key, value)
		route, routeErr := DecodeIPIdentityPairRoute(r, key, value)
		if (err == nil) != (routeErr == nil) {
			t.Fatalf("DecodeIPIdentityPair: %v, DecodeIPIdentityPairRoute: %v", err, routeErr)
		}
		if err != nil {
			return
		}
		want := p
		want.Metadata, want.K8sNamespace, want.K8sPodName, want.K8sServiceAccount = "", "", "", ""
		if !reflect.DeepEqual(route, want) {
			t.Fatalf("DecodeIPIdentityPairRoute\n got %#v\nwant %#v", route, want)
		}
		checkRoundTrip(t, r, key, p, MarshalIPIdentityPair, DecodeIPIdentityPair)
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add(IdentityKey(196915), []byte(goldenIdentity), false)
	f.Add(CachedIdentityKey("c1", 196915), []byte(`k8s:io.kubernetes.pod.namespace=shop;k8s:io.cilium.k8s.policy.cluster=c1;k8s:app=web;`), false)
	f.Add(IdentityKey(98611), []byte(`k8s:io.cilium.k8s.policy.cluster=c1;reserved:x=;cidr:fd00::/64=;`), true)
	f.Fuzz(func(t *testing.T, key string, value []byte, extended bool) {
		r := fuzzRemote(extended)
		id, err := DecodeIdentity(r, key, value)
		if err != nil {
			return
		}
		if c := ClusterIDOf(id.ID, r.MaxConnectedClusters); c != r.ID {
			t.Fatalf("identity %d of cluster %d accepted from cluster %d", id.ID, c, r.ID)
		}
		checkRoundTrip(t, r, key, id, MarshalIdentity, DecodeIdentity)
	})
}

func FuzzDecodeClusterConfig(f *testing.F) {
	f.Add([]byte(goldenClusterConfig))
	f.Add([]byte(`{"id":3,"capabilities":{"syncedCanaries":true,"cached":false,"maxConnectedClusters":255,"serviceExportsEnabled":false}}`))
	f.Add([]byte(`{"id":300,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":511}}`))
	f.Add([]byte(`{"id":9}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		c, err := DecodeClusterConfig(value)
		if err != nil {
			return
		}
		decode := func(_ Remote, _ string, b []byte) (ClusterConfig, error) { return DecodeClusterConfig(b) }
		checkRoundTrip(t, Remote{}, "", c, MarshalClusterConfig, decode)
	})
}

// FuzzIPIdentityPairFastPath checks the reflection-free ipcache parser
// against encoding/json: whatever it accepts, encoding/json decodes to the
// same value; without names it accepts the same and differs only in them.
func FuzzIPIdentityPairFastPath(f *testing.F) {
	for _, v := range []string{
		goldenIPPod, goldenIPCIDR, `{}`, ` { "IP" : "fd00::1" , "Mask" : null , "NamedPorts" : [ ] } `,
		`{"IP":"10.1.0.7","Mask":"","ID":0,"Key":255,"NamedPorts":[{},{"Port":1}]}`,
		`{"IP":"10.1.0.7","ID":01}`, `{"IP":"10.1.0.7","ID":1.0}`, `{"ip":"10.1.0.7"}`, `{"IP":"10.1.0.7","IP":"10.1.0.8"}`,
	} {
		f.Add([]byte(v))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		fast, ok := decodeIPIdentityPairFast(value, true)
		if ok {
			sameAsJSON(t, value, fast)
		}
		sameWithoutNames(t, value, fast, ok)
	})
}

// FuzzNodeFastPath checks the reflection-free node parser against
// encoding/json: whatever it accepts, encoding/json decodes to the same
// value.
func FuzzNodeFastPath(f *testing.F) {
	for _, v := range []string{
		goldenNodeFull, goldenNodeMinimal, `{}`, `{"IPv4AllocCIDR":"10.1.0.1/24","IPv6SecondaryAllocCIDRs":["fd00:2::/64",null]}`,
		` { "IPAddresses" : [ { "IP" : "fd00::1" , "Type" : "x" } , { } ] , "Labels" : { "a" : "1" , "a" : "2" } } `,
		`{"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"/wD/AA=="}}`, `{"IPv4AllocCIDR":{"ip":"10.1.0.0","Mask":"////AA=="}}`,
		`{"ClusterID":03}`, `{"name":"n"}`, `{"Name":"n","Name":"m"}`, `{"Name":null}`, `{"EncryptionKey":256}`,
	} {
		f.Add([]byte(v))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		if fast, ok := decodeNodeFast(value); ok {
			sameAsJSON(t, value, fast)
		}
	})
}
