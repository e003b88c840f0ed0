package policysync_test

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policysync"
)

// BenchmarkNodeTrustColdSync counts what a cold sync of bench/peer's data
// set hands the node trust: 25,000 remote nodes, each named by its tunnel
// route and by 10 of 250,000 ipcache entries, the entries in listing order
// (node i mod 25,000), then one Flush. ns/op is per Ref.
func BenchmarkNodeTrustColdSync(b *testing.B) {
	const nodes, entries = 25000, 275000
	addrs := make([]netip.Addr, nodes)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	b.ReportAllocs()
	var n *policysync.NodeTrust
	for i := 0; b.Loop(); i++ {
		if i%entries == 0 {
			if n != nil {
				if err := n.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			n = policysync.NewNodeTrust(discard{}, 255)
		}
		n.Ref(addrs[i%nodes], 2, 1)
	}
}
