package datapath

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// ParseProto parses the protocol of a service port: "TCP" or "UDP", in
// either case (as in Kubernetes and the kvstore wire format).
func ParseProto(s string) (ipproto.Proto, error) {
	switch p, err := ipproto.Parse(strings.ToUpper(s)); {
	case err == nil && (p == ipproto.TCP || p == ipproto.UDP):
		return p, nil
	default:
		return 0, fmt.Errorf("unsupported protocol %q", s)
	}
}

// TunnelEntry routes a remote node's pod CIDR to that node's underlay address.
type TunnelEntry struct {
	CIDR      netip.Prefix
	NodeIP    netip.Addr
	ClusterID uint32
}

// IPCacheEntry maps a pod IP (or prefix) to its security identity and to the
// node that hosts it. A zero TunnelEndpoint means the IP is on this node.
type IPCacheEntry struct {
	Prefix         netip.Prefix
	Identity       uint32
	TunnelEndpoint netip.Addr
	ClusterID      uint32
}

// Frontend is a service address: a ClusterIP and port for one protocol.
type Frontend struct {
	Addr  netip.AddrPort
	Proto ipproto.Proto
}

func (f Frontend) String() string { return f.Addr.String() + "/" + f.Proto.String() }

// Backend is one destination of a service. Weight 0 means "known but not
// selected for new connections" (kept so established flows can finish).
type Backend struct {
	Addr      netip.AddrPort
	ClusterID uint32
	Weight    uint16
}

// Service is a frontend with its backends. Backends are in a stable order.
type Service struct {
	Frontend Frontend
	Backends []Backend
}

// ServicePatch changes some backends of a service and leaves the others
// as they are, so that one backend change costs the same whatever the
// service's size. Delete removes backends by address (absent ones are
// no-ops), then Upsert sets backends by address: one already in the service
// keeps its place in the backend order, a new one goes after all others.
// A patch of a frontend without a service creates it.
type ServicePatch struct {
	Frontend Frontend
	Upsert   []Backend
	Delete   []netip.AddrPort
}

// Endpoint is a pod on this node: traffic for IP is delivered to IfIndex (the
// host side of the pod's veth).
type Endpoint struct {
	IP      netip.Addr
	IfIndex int
}

// Batch is a set of changes applied together. Upserts replace whole entries;
// deletes of absent entries are no-ops; an upsert wins over a delete of the
// same key. Service patches apply after the upserts and deletes of services,
// in order. Applying the same batch twice leaves the same state (idempotent).
type Batch struct {
	UpsertTunnels   []TunnelEntry
	DeleteTunnels   []netip.Prefix
	UpsertIPCache   []IPCacheEntry
	DeleteIPCache   []netip.Prefix
	UpsertServices  []Service
	DeleteServices  []Frontend
	PatchServices   []ServicePatch
	UpsertEndpoints []Endpoint
	DeleteEndpoints []netip.Addr
}

// Empty reports whether the batch changes nothing.
func (b *Batch) Empty() bool {
	return len(b.UpsertTunnels)+len(b.DeleteTunnels)+len(b.UpsertIPCache)+len(b.DeleteIPCache)+
		len(b.UpsertServices)+len(b.DeleteServices)+len(b.PatchServices)+len(b.UpsertEndpoints)+len(b.DeleteEndpoints) == 0
}

// Patch applies p to the backends bs as ServicePatch describes and returns
// the result (bs's array may be reused). It is the reference semantics of a
// patch, for in-memory implementations; it costs O(len(bs)) per patch.
func (p ServicePatch) Patch(bs []Backend) []Backend {
	if len(p.Delete) > 0 {
		del := make(map[netip.AddrPort]bool, len(p.Delete))
		for _, a := range p.Delete {
			del[a] = true
		}
		bs = slices.DeleteFunc(bs, func(b Backend) bool { return del[b.Addr] })
	}
	for _, u := range p.Upsert {
		if i := slices.IndexFunc(bs, func(b Backend) bool { return b.Addr == u.Addr }); i >= 0 {
			bs[i] = u
		} else {
			bs = append(bs, u)
		}
	}
	return bs
}

// State is the whole programmed state, as read back from a datapath.
type State struct {
	Tunnels   map[netip.Prefix]TunnelEntry
	IPCache   map[netip.Prefix]IPCacheEntry
	Services  map[Frontend]Service
	Endpoints map[netip.Addr]Endpoint
}

// NewState returns an empty State with its maps allocated.
func NewState() State {
	return State{
		Tunnels:   map[netip.Prefix]TunnelEntry{},
		IPCache:   map[netip.Prefix]IPCacheEntry{},
		Services:  map[Frontend]Service{},
		Endpoints: map[netip.Addr]Endpoint{},
	}
}

// Writer programs desired state. Implementations must be safe for use by one
// goroutine at a time; the agent serialises calls.
type Writer interface {
	// Apply applies a batch. On error, the part of the batch that was applied
	// stays applied; callers retry the whole batch (it is idempotent).
	Apply(ctx context.Context, b Batch) error
	// Dump reads back what is programmed, so that a restarted agent can
	// restore its view and delete only what is no longer wanted.
	Dump() (State, error)
}
