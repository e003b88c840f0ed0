package bpf

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestMapKeys(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key     datapath.PolicyKey
		deny    bool
		lens    []uint32
		wantErr bool
	}{
		{name: "every protocol", key: datapath.PolicyKey{Subject: 1, Peer: 2}, lens: []uint32{polFixedBits}},
		{name: "one protocol", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.UDP}, lens: []uint32{polFixedBits + 8}},
		{name: "one port", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: 80, EndPort: 80}, deny: true, lens: []uint32{polFullBits}},
		{name: "range", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: 80, EndPort: 83}, lens: []uint32{polFullBits - 2}},
		{name: "port without protocol", key: datapath.PolicyKey{Subject: 1, Port: 80, EndPort: 80}, wantErr: true},
		{name: "reversed range", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: 80, EndPort: 79}, wantErr: true},
		{name: "end port alone", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, EndPort: 79}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := validKey(tc.key); (err != nil) != tc.wantErr {
				t.Fatalf("validKey: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			mks := mapKeys(tc.key, tc.deny)
			if len(mks) != len(tc.lens) {
				t.Fatalf("%d map keys, want %d", len(mks), len(tc.lens))
			}
			for i, mk := range mks {
				if mk.Prefixlen != tc.lens[i] || (mk.Deny == 1) != tc.deny || mk.Subject != hton32(tc.key.Subject) {
					t.Errorf("map key %d = %+v", i, mk)
				}
			}
		})
	}
}

func TestOwnerSet(t *testing.T) {
	k := func(port uint16) datapath.PolicyKey {
		return datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: port, EndPort: port + 1}
	}
	type op struct {
		add   bool
		port  uint16
		rule  uint32
		empty bool // after a remove
		min   uint32
	}
	for _, tc := range []struct {
		name string
		ops  []op
	}{
		{"one owner", []op{{add: true, port: 80, rule: 5, min: 5}, {port: 80, empty: true}}},
		{"rule updated", []op{{add: true, port: 80, rule: 5, min: 5}, {add: true, port: 80, rule: 3, min: 3}}},
		{"three owners, first removed", []op{{add: true, port: 80, rule: 5, min: 5}, {add: true, port: 82, rule: 2, min: 2},
			{add: true, port: 84, rule: 9, min: 2}, {port: 80, min: 2}, {port: 82, min: 9}, {port: 84, empty: true}}},
		{"absent key removed", []op{{add: true, port: 80, rule: 5, min: 5}, {port: 90, min: 5}}},
		{"empty set, absent key", []op{{port: 90, empty: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o ownerSet
			for i, op := range tc.ops {
				if op.add {
					o.set(k(op.port), op.rule)
				} else if empty := o.remove(k(op.port)); empty != op.empty {
					t.Fatalf("op %d: remove reports empty %v, want %v", i, empty, op.empty)
				}
				if !op.empty && o.minRule() != op.min {
					t.Errorf("op %d: min rule %d, want %d", i, o.minRule(), op.min)
				}
			}
		})
	}
}

// TestTrustedNodesBatch: the trusted nodes of a batch are written and
// deleted (in batch syscalls from two on), a node deleted that the map
// does not hold is no error, and an IPv6 node is refused.
func TestTrustedNodesBatch(t *testing.T) {
	dp, _ := openTest(t)
	pw, err := NewPolicyWriter(dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	node := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)}) }
	held := func() map[netip.Addr]cmNodeValue {
		out := map[netip.Addr]cmNodeValue{}
		var k uint32
		var v cmNodeValue
		it := dp.objs.CmNodes.Iterate()
		for it.Next(&k, &v) {
			out[addrFrom(k)] = v
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := map[netip.Addr]cmNodeValue{}
	for _, step := range []struct {
		name    string
		b       datapath.PolicyBatch
		wantErr error
		upsert  []int // nodes written for cluster 2 by the step
		deleted []int
	}{
		{"one node", datapath.PolicyBatch{UpsertNodes: []datapath.TrustedNode{{IP: node(0), ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16}}}, nil, []int{0}, nil},
		{"a cold sync's many nodes", nodesBatch(node, 1, 500), nil, seq(1, 500), nil},
		{"many nodes go, one the map does not hold", datapath.PolicyBatch{DeleteNodes: append(addrs(node, 100, 300), node(9999))}, nil, nil, seq(100, 300)},
		{"one node goes", datapath.PolicyBatch{DeleteNodes: []netip.Addr{node(0)}}, nil, nil, []int{0}},
		{"an IPv6 node is skipped, the IPv4 node beside it written", datapath.PolicyBatch{UpsertNodes: []datapath.TrustedNode{
			{IP: netip.MustParseAddr("fd00::1"), ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16},
			{IP: node(7), ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16},
		}}, nil, []int{7}, nil},
	} {
		err := pw.Apply(step.b)
		if !errors.Is(err, step.wantErr) {
			t.Fatalf("%s: %v, want %v", step.name, err, step.wantErr)
		}
		for _, i := range step.upsert {
			want[node(i)] = cmNodeValue{ClusterId: 2, IdLo: 2 << 16, IdHi: 3 << 16}
		}
		for _, i := range step.deleted {
			delete(want, node(i))
		}
		if got := held(); !maps.Equal(got, want) {
			t.Fatalf("%s: cm_nodes holds %d nodes, want %d", step.name, len(got), len(want))
		}
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func addrs(node func(int) netip.Addr, from, to int) []netip.Addr {
	var out []netip.Addr
	for _, i := range seq(from, to) {
		out = append(out, node(i))
	}
	return out
}

func nodesBatch(node func(int) netip.Addr, from, to int) datapath.PolicyBatch {
	var b datapath.PolicyBatch
	for _, ip := range addrs(node, from, to) {
		b.UpsertNodes = append(b.UpsertNodes, datapath.TrustedNode{IP: ip, ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16})
	}
	return b
}
