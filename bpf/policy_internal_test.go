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
