package statusapi

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestPrintPinned(t *testing.T) {
	st := datapath.NewState()
	for _, e := range []datapath.TunnelEntry{
		{CIDR: netip.MustParsePrefix("10.2.1.0/24"), NodeIP: netip.MustParseAddr("192.168.2.2"), ClusterID: 2},
		{CIDR: netip.MustParsePrefix("10.2.0.0/24"), NodeIP: netip.MustParseAddr("192.168.2.1"), ClusterID: 2},
	} {
		st.Tunnels[e.CIDR] = e
	}
	for _, e := range []datapath.IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.2.0.10/32"), Identity: 2<<16 | 300, TunnelEndpoint: netip.MustParseAddr("192.168.2.1"), ClusterID: 2},
		{Prefix: netip.MustParsePrefix("10.1.0.10/32"), ClusterID: 1},
	} {
		st.IPCache[e.Prefix] = e
	}
	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	st.Services[fe] = datapath.Service{Frontend: fe, Backends: []datapath.Backend{
		{Addr: netip.MustParseAddrPort("10.1.0.10:8080"), ClusterID: 1, Weight: 1},
		{Addr: netip.MustParseAddrPort("10.2.0.10:8080"), ClusterID: 2, Weight: 0},
	}}
	tests := []struct {
		name  string
		table string
		want  []string // lines, in order
	}{
		{"tunnel", TableTunnel, []string{"CIDR", "10.2.0.0/24  192.168.2.1  2", "10.2.1.0/24  192.168.2.2  2"}},
		{"ipcache", TableIPCache, []string{"PREFIX", "10.1.0.10/32  0", "local", "10.2.0.10/32  131372", "192.168.2.1"}},
		{"service", TableService, []string{"FRONTEND", "10.96.0.10:80/TCP", "10.1.0.10:8080 1:1, 10.2.0.10:8080 2:0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := PrintPinned(&buf, st, tt.table, false); err != nil {
				t.Fatal(err)
			}
			out, pos := buf.String(), 0
			for _, w := range tt.want {
				i := strings.Index(out[pos:], w)
				if i < 0 {
					t.Fatalf("output lacks %q after position %d:\n%s", w, pos, out)
				}
				pos += i + len(w)
			}
			buf.Reset()
			if err := PrintPinned(&buf, st, tt.table, true); err != nil {
				t.Fatal(err)
			}
			var entries []json.RawMessage
			if err := json.Unmarshal(buf.Bytes(), &entries); err != nil || len(entries) == 0 {
				t.Fatalf("json output %s: %v", buf.String(), err)
			}
		})
	}
	if err := PrintPinned(&bytes.Buffer{}, st, "routes", false); err == nil {
		t.Error("unknown table accepted")
	}
}
