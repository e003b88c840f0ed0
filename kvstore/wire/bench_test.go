package wire

import (
	"net/netip"
	"testing"
)

// Decoding cost per entry, for the cold-sync budget of DESIGN §7 (250k
// ipcache entries + 25k nodes + 25k identities programmed in ≤ 2.4 s).

func BenchmarkDecodeIPIdentityPair(b *testing.B) {
	key, value := IPKey(netip.MustParseAddr("10.1.0.7")), []byte(goldenIPPod)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeIPIdentityPair(testRemote, key, value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeIPIdentityPairRoute(b *testing.B) {
	key, value := IPKey(netip.MustParseAddr("10.1.0.7")), []byte(goldenIPPod)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeIPIdentityPairRoute(testRemote, key, value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeNode(b *testing.B) {
	key, value := NodeKey("c1", "node1"), []byte(goldenNodeFull)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeNode(testRemote, key, value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeIdentity(b *testing.B) {
	key, value := IdentityKey(196915), []byte(goldenIdentity)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeIdentity(testRemote, key, value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeService(b *testing.B) {
	key, value := ServiceKey("c1", "shop", "web"), []byte(goldenService)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeService(testRemote, key, value); err != nil {
			b.Fatal(err)
		}
	}
}
