package nodes

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func TestValue(t *testing.T) {
	for _, tc := range []struct {
		name string
		node corev1.Node
		want string
	}{
		{
			name: "dual stack with external IP",
			node: corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"zone": "a"}},
				Spec:       corev1.NodeSpec{PodCIDR: "10.1.0.0/24", PodCIDRs: []string{"10.1.0.0/24", "fd00:1::/64"}},
				Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeHostName, Address: "n1"},
					{Type: corev1.NodeInternalIP, Address: "192.168.0.1"},
					{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
					{Type: corev1.NodeInternalDNS, Address: "n1.local"},
				}},
			},
			want: `{"Name":"n1","Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"192.168.0.1"},{"Type":"ExternalIP","IP":"203.0.113.1"}],` +
				`"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":{"IP":"fd00:1::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null,` +
				`"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":7,"Source":"k8s","EncryptionKey":0,"Labels":{"zone":"a"},"Annotations":null,"NodeIdentity":0,"WireguardPubKey":"","BootID":""}`,
		},
		{
			name: "legacy podCIDR, no addresses, bad CIDR and IP skipped",
			node: corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "n2"},
				Spec:       corev1.NodeSpec{PodCIDR: "10.2.0.0/24"},
				Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "not-an-ip"}}},
			},
			want: `{"Name":"n2","Cluster":"c1","IPAddresses":null,"IPv4AllocCIDR":{"IP":"10.2.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,` +
				`"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":7,"Source":"k8s","EncryptionKey":0,"Labels":null,"Annotations":null,"NodeIdentity":0,"WireguardPubKey":"","BootID":""}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := wire.MarshalNode(Value(&tc.node, "c1", 7))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Fatalf("got  %s\nwant %s", b, tc.want)
			}
			if _, err := wire.DecodeNode(wire.Remote{Name: "c1", ID: 7}, wire.NodeKey("c1", tc.node.Name), b); err != nil {
				t.Fatalf("a reader would drop it: %v", err)
			}
		})
	}
}
