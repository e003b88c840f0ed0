package statusapi

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// The tables of a node's programmed datapath that PrintPinned prints.
const (
	TableTunnel  = "tunnel"
	TableIPCache = "ipcache"
	TableService = "service"
)

// PrintPinned prints one table of the state read from a node's pinned maps
// (bpf.DumpPinned): what the kernel really holds, to set beside the desired
// state of `status --entries`. jsonOut prints the entries as a JSON array.
func PrintPinned(w io.Writer, st datapath.State, table string, jsonOut bool) error {
	var rows [][]string
	var header string
	var entries any
	switch table {
	case TableTunnel:
		l := slices.SortedFunc(maps.Values(st.Tunnels), func(a, b datapath.TunnelEntry) int { return cmpPrefix(a.CIDR, b.CIDR) })
		entries, header = l, "CIDR\tNODE IP\tCLUSTER ID"
		for _, e := range l {
			rows = append(rows, []string{e.CIDR.String(), e.NodeIP.String(), fmt.Sprint(e.ClusterID)})
		}
	case TableIPCache:
		l := slices.SortedFunc(maps.Values(st.IPCache), func(a, b datapath.IPCacheEntry) int { return cmpPrefix(a.Prefix, b.Prefix) })
		entries, header = l, "PREFIX\tIDENTITY\tTUNNEL ENDPOINT\tCLUSTER ID"
		for _, e := range l {
			ep := "local"
			if e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.IsUnspecified() {
				ep = e.TunnelEndpoint.String()
			}
			rows = append(rows, []string{e.Prefix.String(), fmt.Sprint(e.Identity), ep, fmt.Sprint(e.ClusterID)})
		}
	case TableService:
		l := slices.SortedFunc(maps.Values(st.Services), func(a, b datapath.Service) int {
			return cmp.Or(a.Frontend.Addr.Compare(b.Frontend.Addr), cmp.Compare(a.Frontend.Proto, b.Frontend.Proto))
		})
		entries, header = l, "FRONTEND\tBACKENDS (address cluster:weight)"
		for _, s := range l {
			bs := make([]string, 0, len(s.Backends))
			for _, b := range s.Backends {
				bs = append(bs, fmt.Sprintf("%s %d:%d", b.Addr, b.ClusterID, b.Weight))
			}
			rows = append(rows, []string{s.Frontend.String(), strings.Join(bs, ", ")})
		}
	default:
		return fmt.Errorf("unknown table %q (want %s, %s or %s)", table, TableTunnel, TableIPCache, TableService)
	}
	if jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func cmpPrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}
