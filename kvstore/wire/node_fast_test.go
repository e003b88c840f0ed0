package wire

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

func TestNodeFastPath(t *testing.T) {
	marshalled, err := MarshalNode(Node{Name: "n\u00e9", Cluster: "c1", ClusterID: 3, Source: NodeSourceKubernetes, EncryptionKey: 255,
		IPAddresses:             []NodeAddress{{NodeInternalIP, netip.MustParseAddr("10.0.0.1")}, {NodeExternalIP, netip.MustParseAddr("fd00::1")}},
		IPv4AllocCIDR:           MustParseCIDR("10.1.0.0/24"),
		IPv6AllocCIDR:           MustParseCIDR("fd00:1::/64"),
		IPv4SecondaryAllocCIDRs: []CIDR{MustParseCIDR("10.2.0.0/16")},
		IPv6SecondaryAllocCIDRs: []CIDR{},
		IPv4HealthIP:            netip.MustParseAddr("10.1.0.5"),
		Labels:                  map[string]string{"a": "b", "": ""}, Annotations: map[string]string{},
		NodeIdentity: 4294967295, WireguardPubKey: "key=", BootID: "boot"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		value string
		fast  bool // whether the fast path handles it
	}{
		{"golden full", goldenNodeFull, true},
		{"golden minimal", goldenNodeMinimal, true},
		{"written by MarshalNode", string(marshalled), true},
		{"empty object", `{}`, true},
		{"white space", " {\n\t\"Name\" : \"n\" , \"IPv4AllocCIDR\" : { \"Mask\" : \"////AA==\" , \"IP\" : \"10.1.0.0\" } }\r\n", true},
		{"CIDR in string form, host bits", `{"IPv4AllocCIDR":"10.1.0.1/24","IPv6SecondaryAllocCIDRs":["fd00:2::/64",null]}`, true},
		{"empty lists and maps", `{"IPAddresses":[],"IPv4SecondaryAllocCIDRs":[],"Labels":{},"Annotations":{}}`, true},
		{"address without IP", `{"IPAddresses":[{"Type":"InternalIP","IP":""},{}]}`, true},
		{"label given twice", `{"Labels":{"a":"1","a":"2"}}`, true},
		{"escaped string", `{"Name":"a\"b"}`, false},
		{"HTML-escaped by encoding/json", `{"Name":"\u003c"}`, false},
		{"escaped label", `{"Labels":{"a":"\u003c"}}`, false},
		{"lower-case key", `{"name":"n"}`, false},
		{"unknown key", `{"Name":"n","IPv4NodeIP":""}`, false},
		{"duplicate key", `{"Name":"n","Name":"m"}`, false},
		{"duplicate CIDR key", `{"IPv4AllocCIDR":{"IP":"10.1.0.0","IP":"10.2.0.0","Mask":"////AA=="}}`, false},
		{"CIDR key in lower case", `{"IPv4AllocCIDR":{"ip":"10.1.0.0","Mask":"////AA=="}}`, false},
		{"CIDR without mask", `{"IPv4AllocCIDR":{"IP":"10.1.0.0"}}`, false},
		{"CIDR with non-canonical mask", `{"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"/wD/AA=="}}`, false},
		{"CIDR with bad base64", `{"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"////AA="}}`, false},
		{"CIDR mask of the other family", `{"IPv4AllocCIDR":{"IP":"fd00::","Mask":"////AA=="}}`, false},
		{"bad CIDR string", `{"IPv4AllocCIDR":"10.1.0.0/33"}`, false},
		{"CIDR as number", `{"IPv4AllocCIDR":7}`, false},
		{"null string", `{"Name":null}`, false},
		{"null IP", `{"IPv4HealthIP":null}`, false},
		{"null address", `{"IPAddresses":[null]}`, false},
		{"null label value", `{"Labels":{"a":null}}`, false},
		{"bad IP", `{"IPv4HealthIP":"10.0.0.x"}`, false},
		{"leading zero", `{"ClusterID":03}`, false},
		{"fraction", `{"ClusterID":3.0}`, false},
		{"exponent", `{"ClusterID":3e0}`, false},
		{"negative", `{"ClusterID":-3}`, false},
		{"overflow", `{"EncryptionKey":256}`, false},
		{"invalid UTF-8", "{\"Name\":\"\xff\"}", false},
		{"trailing data", `{"Name":"n"}x`, false},
		{"trailing comma", `{"Name":"n",}`, false},
		{"array", `[]`, false},
		{"null", `null`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fast, ok := decodeNodeFast([]byte(tt.value))
			if ok != tt.fast {
				t.Fatalf("fast path ok = %v, want %v", ok, tt.fast)
			}
			if ok {
				sameAsJSON(t, []byte(tt.value), fast)
			}
		})
	}
}

// sameAsJSON fails unless encoding/json decodes value to fast, the value
// that a fast path accepted.
func sameAsJSON[T any](t *testing.T, value []byte, fast T) {
	t.Helper()
	var slow T
	if err := json.Unmarshal(value, &slow); err != nil {
		t.Fatalf("fast path accepts what encoding/json refuses (%v): %q", err, value)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("fast path differs from encoding/json on %q\nfast: %#v\nslow: %#v", value, fast, slow)
	}
}
