package statusapi

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// addrPolicy is enginePolicy that also resolves addresses, as the agent
// does from its ipcache: a known one to its identity, any other to world.
type addrPolicy struct {
	enginePolicy
	addrs map[netip.Addr]policy.ID
}

func (p addrPolicy) Resolve(ep string) ([]policy.ID, error) {
	if a, err := netip.ParseAddr(ep); err == nil {
		if id, ok := p.addrs[a]; ok {
			return []policy.ID{id}, nil
		}
		return []policy.ID{selector.IDWorld}, nil
	}
	return p.enginePolicy.Resolve(ep)
}

// services is a merger snapshot.
type services []servicemerge.Snapshot

func (s services) Snapshot() []servicemerge.Snapshot { return s }
func (services) ProxyOnly() []servicemerge.Kept      { return nil }

// TestTraceService: a trace to a Service frontend the agent translates is
// decided as the datapath decides it, against each backend a new flow may
// pick, on the backend's port; an address and port that is not a frontend
// is traced as that address (world here).
func TestTraceService(t *testing.T) {
	const client, db, other = policy.ID(1<<16 | 256), policy.ID(1<<16 | 257), policy.ID(1<<16 | 258)
	e := policy.New(policy.Config{ClusterName: "c1"})
	for id, app := range map[policy.ID]string{client: "client", db: "db", other: "other"} {
		e.UpsertIdentity(policy.Identity{ID: id, Labels: selector.MustParseLabels("k8s:app="+app,
			"k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c1")})
	}
	pol, err := rules.Decode([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"client","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEndpoints":[{"matchLabels":{"app":"db"}}],"toPorts":[{"ports":[{"port":"5432","protocol":"TCP"}]}]}]}}`),
		rules.Options{ClusterName: "c1", DefaultLocalCluster: true})
	if err != nil {
		t.Fatal(err)
	}
	e.UpsertPolicy(pol)
	dbIP, otherIP, drainedIP := netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.1.0.6"), netip.MustParseAddr("10.1.0.7")
	svc := func(ns, name, fe string, backends ...datapath.Backend) servicemerge.Snapshot {
		return servicemerge.Snapshot{Name: servicemerge.Name{Namespace: ns, Name: name}, Services: []datapath.Service{{
			Frontend: datapath.Frontend{Addr: netip.MustParseAddrPort(fe), Proto: ipproto.TCP}, Backends: backends}}}
	}
	snap := services{
		svc("shop", "db", "10.96.0.30:5432", datapath.Backend{Addr: netip.AddrPortFrom(dbIP, 5432), ClusterID: 1, Weight: 1},
			datapath.Backend{Addr: netip.AddrPortFrom(drainedIP, 5432), ClusterID: 1, Weight: 0}),
		svc("shop", "other", "10.96.0.31:80", datapath.Backend{Addr: netip.AddrPortFrom(otherIP, 8080), ClusterID: 1, Weight: 1}),
		svc("shop", "mixed", "10.96.0.32:5432", datapath.Backend{Addr: netip.AddrPortFrom(dbIP, 5432), ClusterID: 1, Weight: 1},
			datapath.Backend{Addr: netip.AddrPortFrom(otherIP, 5432), ClusterID: 1, Weight: 1}),
		svc("shop", "empty", "10.96.0.33:80"),
	}

	ctx, sock := servePolicy(t, snap, func(s *Server) {
		s.SetPolicy(addrPolicy{enginePolicy{e}, map[netip.Addr]policy.ID{dbIP: db, otherIP: other, drainedIP: other}})
	})

	type backend struct {
		addr     string
		identity policy.ID
		allowed  bool
	}
	for _, tc := range []struct {
		name     string
		src      policy.ID
		dst      string
		dport    uint32
		proto    string
		allowed  bool
		service  string
		backends []backend // with service
		dstID    policy.ID // without service
		printed  []string
	}{
		{name: "allowed by the backend's identity and port", src: client, dst: "10.96.0.30", dport: 5432, allowed: true, service: "shop/db",
			backends: []backend{{"10.1.0.5:5432", db, true}}, printed: []string{"ALLOWED: identity 65792 -> service shop/db", "backend 10.1.0.5:5432, identity 65793: ALLOWED", "egress at the source: allowed by cnp/shop/client egress[0]"}},
		{name: "denied by the backend's identity", src: client, dst: "10.96.0.31", dport: 80, service: "shop/other",
			backends: []backend{{"10.1.0.6:8080", other, false}}, printed: []string{"DENIED: identity 65792 -> service shop/other", "backend 10.1.0.6:8080, identity 65794: DENIED"}},
		{name: "one backend denied of two", src: client, dst: "10.96.0.32", dport: 5432, service: "shop/mixed",
			backends: []backend{{"10.1.0.5:5432", db, true}, {"10.1.0.6:5432", other, false}}},
		{name: "no egress policy", src: other, dst: "10.96.0.31", dport: 80, allowed: true, service: "shop/other",
			backends: []backend{{"10.1.0.6:8080", other, true}}},
		{name: "no backend", src: other, dst: "10.96.0.33", dport: 80, service: "shop/empty", printed: []string{"no backend: new flows are dropped"}},
		{name: "not a frontend port: the address, world", src: client, dst: "10.96.0.30", dport: 5433, dstID: selector.IDWorld},
		{name: "not a frontend protocol: the address, world", src: client, dst: "10.96.0.30", dport: 5432, proto: "UDP", dstID: selector.IDWorld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(ctx, sock, &agentv1.TracePolicyRequest{Src: strconv.Itoa(int(tc.src)), Dst: tc.dst, Dport: tc.dport, Protocol: tc.proto})
			if err != nil {
				t.Fatal(err)
			}
			if r.GetAllowed() != tc.allowed || r.GetService() != tc.service || r.GetDstIdentity() != uint32(tc.dstID) || len(r.GetBackends()) != len(tc.backends) {
				t.Fatalf("trace = %v, want allowed %v, service %q, dst identity %d, %d backends", r, tc.allowed, tc.service, tc.dstID, len(tc.backends))
			}
			for i, want := range tc.backends {
				b := r.GetBackends()[i]
				if b.GetAddress() != want.addr || b.GetIdentity() != uint32(want.identity) || b.GetAllowed() != want.allowed || !b.GetEgress().GetEvaluated() {
					t.Errorf("backend %d = %v, want %+v", i, b, want)
				}
			}
			var buf bytes.Buffer
			if err := PrintTrace(&buf, r, false); err != nil {
				t.Fatal(err)
			}
			for _, want := range tc.printed {
				if !strings.Contains(buf.String(), want) {
					t.Errorf("printed trace lacks %q:\n%s", want, buf.String())
				}
			}
		})
	}

	// Beside kube-proxy a packet to a frontend without a backend goes on
	// untranslated: the trace is the address's (world here), for a pod
	// with an egress policy and for one without.
	ctxK, sockK := servePolicy(t, snap, func(s *Server) {
		s.SetPolicy(addrPolicy{enginePolicy{e}, map[netip.Addr]policy.ID{dbIP: db, otherIP: other, drainedIP: other}})
		s.cfg.BesideKubeProxy = true
	})
	for _, tc := range []struct {
		name    string
		src     policy.ID
		allowed bool
	}{
		{"egress policy without world: denied", client, false},
		{"no egress policy: passed to kube-proxy", other, true},
	} {
		t.Run("beside kube-proxy, no backend, "+tc.name, func(t *testing.T) {
			r, err := Trace(ctxK, sockK, &agentv1.TracePolicyRequest{Src: strconv.Itoa(int(tc.src)), Dst: "10.96.0.33", Dport: 80})
			if err != nil {
				t.Fatal(err)
			}
			if r.GetAllowed() != tc.allowed || r.GetService() != "shop/empty" || r.GetDstIdentity() != uint32(selector.IDWorld) || len(r.GetBackends()) != 0 {
				t.Fatalf("trace = %v, want allowed %v, service shop/empty, the address's identity (world), no backends", r, tc.allowed)
			}
			var buf bytes.Buffer
			if err := PrintTrace(&buf, r, false); err != nil {
				t.Fatal(err)
			}
			if want := "no backend: passed on untranslated, for kube-proxy to reject; decided against the address, identity 2"; !strings.Contains(buf.String(), want) {
				t.Errorf("printed trace lacks %q:\n%s", want, buf.String())
			}
		})
	}
}
