package bpf

import (
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
