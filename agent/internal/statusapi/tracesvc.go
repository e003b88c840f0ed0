package statusapi

import (
	"fmt"
	"io"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// frontend finds the programmed Service frontend dst:port/proto, when dst
// is an address: the datapath translates a pod's flow to it before its
// egress policy decides, so a trace to it is a trace to its backends.
func (s *Server) frontend(dst string, port uint16, proto ipproto.Proto) (servicemerge.Name, datapath.Service, bool) {
	a, err := netip.ParseAddr(dst)
	if err != nil || s.services == nil {
		return servicemerge.Name{}, datapath.Service{}, false
	}
	fe := datapath.Frontend{Addr: netip.AddrPortFrom(a.Unmap(), port), Proto: proto}
	for _, snap := range s.services.Snapshot() {
		for _, svc := range snap.Services {
			if svc.Frontend == fe {
				return snap.Name, svc, true
			}
		}
	}
	return servicemerge.Name{}, datapath.Service{}, false
}

// traceService traces src to every backend of svc a new flow may pick (a
// weight above 0), on the backend's port, as the datapath decides it after
// the translation. The flow is allowed when every such backend is; with
// none, the datapath drops new flows (full mode; beside kube-proxy
// TracePolicy traces the address instead).
func (s *Server) traceService(src policy.ID, name servicemerge.Name, svc datapath.Service) (*agentv1.TracePolicyResponse, error) {
	resp := &agentv1.TracePolicyResponse{SrcIdentity: uint32(src), Service: name.String(), Allowed: true}
	for _, b := range svc.Backends {
		if b.Weight == 0 {
			continue
		}
		ids, err := s.policy.Resolve(b.Addr.Addr().String())
		if err != nil || len(ids) != 1 {
			return nil, status.Errorf(codes.Internal, "backend %s of %s: identity of its address: %d identities, %v", b.Addr, name, len(ids), err)
		}
		r := s.policy.Trace(policy.Flow{Src: src, Dst: ids[0], Port: b.Addr.Port(), Proto: svc.Frontend.Proto})
		resp.Backends = append(resp.Backends, &agentv1.TraceBackend{Address: b.Addr.String(), Identity: uint32(ids[0]),
			Allowed: r.Allowed, Egress: verdict(r.Egress), Ingress: verdict(r.Ingress)})
		resp.Allowed = resp.Allowed && r.Allowed
	}
	resp.Allowed = resp.Allowed && len(resp.Backends) > 0
	return resp, nil
}

// printServiceTrace prints a trace to a Service's frontend, backend by
// backend.
func printServiceTrace(w io.Writer, r *agentv1.TracePolicyResponse) {
	how := "the datapath decides a flow against the backend it picks"
	if len(r.GetBackends()) == 0 {
		how = "no backend"
	}
	fmt.Fprintf(w, "%s: identity %d -> service %s (%s)\n", allowedWord(r.GetAllowed()), r.GetSrcIdentity(), r.GetService(), how)
	switch {
	case len(r.GetBackends()) > 0:
	case r.GetDstIdentity() != 0:
		fmt.Fprintf(w, "  no backend: passed on untranslated, for kube-proxy to reject; decided against the address, identity %d\n", r.GetDstIdentity())
		printVerdicts(w, "  ", r.GetEgress(), r.GetIngress())
	default:
		fmt.Fprintln(w, "  no backend: new flows are dropped")
	}
	for _, b := range r.GetBackends() {
		fmt.Fprintf(w, "  backend %s, identity %d: %s\n", b.GetAddress(), b.GetIdentity(), allowedWord(b.GetAllowed()))
		printVerdicts(w, "    ", b.GetEgress(), b.GetIngress())
	}
}

func allowedWord(allowed bool) string {
	if allowed {
		return "ALLOWED"
	}
	return "DENIED"
}
