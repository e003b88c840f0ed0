package statusapi

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// Policy is what the server needs of the agent's policy plane.
type Policy interface {
	// Resolve turns "namespace/pod" (of this node), an identity number or
	// labels into identities; "" is every local endpoint.
	Resolve(endpoint string) ([]policy.ID, error)
	Endpoint(id policy.ID) (policy.EndpointPolicy, bool)
	Labels(id policy.ID) string
	Trace(f policy.Flow) policy.TraceResult
	Refusals() []policywatch.Refusal
	Policies() int
	Failures() int
	// CIDRIdentities returns the CIDR identities held and their bound.
	CIDRIdentities() (held, max int)
	Drops() map[policysync.DropKey]uint64
	NamedPortConflicts() map[policy.ID][]string
	MapUse() policysync.MapUse
}

// SetPolicy adds the policy plane to the status and serves GetPolicy and
// TracePolicy. Call it before Run.
func (s *Server) SetPolicy(p Policy) { s.policy = p }

func (s *Server) policyStatus(names map[uint32]string) *agentv1.PolicyStatus {
	p := s.policy
	held, bound := p.CIDRIdentities()
	out := &agentv1.PolicyStatus{Policies: uint32(p.Policies()), Failures: uint64(p.Failures()),
		CidrIdentities: uint32(held), CidrIdentitiesMax: uint32(bound)}
	for _, r := range p.Refusals() {
		out.Refused = append(out.Refused, &agentv1.PolicyRefusal{Policy: r.Policy, Reason: r.Reason})
	}
	drops := p.Drops()
	for _, k := range slices.SortedFunc(maps.Keys(drops), func(a, b policysync.DropKey) int {
		return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(dirName(a.Egress), dirName(b.Egress)), cmp.Compare(a.SrcCluster, b.SrcCluster))
	}) {
		out.Drops = append(out.Drops, &agentv1.PolicyDrops{Policy: k.Policy, Direction: dirName(k.Egress),
			SourceClusterId: k.SrcCluster, SourceCluster: clusterName(names, k.SrcCluster, s.cfg), Count: drops[k]})
	}
	u := p.MapUse()
	out.MapKeys, out.MapCapacity, out.CapacityRefusals = uint64(u.Used), uint64(u.Capacity), u.Refusals
	for _, r := range u.Refused {
		out.OverCapacity = append(out.OverCapacity, &agentv1.PolicyOverCapacity{Identity: r.Subject, Labels: p.Labels(policy.ID(r.Subject)), Keys: uint64(r.Keys)})
	}
	conflicts := p.NamedPortConflicts()
	for _, id := range slices.Sorted(maps.Keys(conflicts)) {
		out.NamedPortConflicts = append(out.NamedPortConflicts, &agentv1.NamedPortConflict{
			Identity: uint32(id), Labels: p.Labels(id), Names: conflicts[id]})
	}
	return out
}

func dirName(egress bool) string {
	if egress {
		return "egress"
	}
	return "ingress"
}

func clusterName(names map[uint32]string, id uint32, cfg Config) string {
	if id == cfg.ClusterID {
		return cfg.ClusterName
	}
	return names[id]
}

func (s *Server) needPolicy() error {
	if s.policy == nil {
		return status.Error(codes.Unavailable, "the agent runs without a policy plane")
	}
	return nil
}

// GetPolicy implements agentv1.StatusServer.
func (s *Server) GetPolicy(_ context.Context, req *agentv1.GetPolicyRequest) (*agentv1.GetPolicyResponse, error) {
	if err := s.needPolicy(); err != nil {
		return nil, err
	}
	ids, err := s.policy.Resolve(req.GetEndpoint())
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	resp := &agentv1.GetPolicyResponse{}
	for _, id := range ids {
		ep, ok := s.policy.Endpoint(id)
		if !ok {
			if req.GetEndpoint() != "" {
				return nil, status.Errorf(codes.NotFound, "identity %d is not a local endpoint", id)
			}
			continue
		}
		resp.Endpoints = append(resp.Endpoints, &agentv1.EndpointPolicy{Identity: uint32(id), Labels: s.policy.Labels(id),
			Ingress: s.dirPolicy(ep[rules.Ingress]), Egress: s.dirPolicy(ep[rules.Egress])})
	}
	return resp, nil
}

func (s *Server) dirPolicy(d policy.DirPolicy) *agentv1.DirectionPolicy {
	out := &agentv1.DirectionPolicy{Enforced: d.Enforced}
	for _, k := range slices.SortedFunc(maps.Keys(d.Entries), compareKeys) {
		e := d.Entries[k]
		pe := &agentv1.PolicyEntry{Protocol: k.Proto.String(), Port: uint32(k.Port), EndPort: uint32(k.EndPort), Deny: e.Deny, Rule: e.Rule.String()}
		switch {
		case k.Peer.ID == 0:
			pe.Peer = "*"
		default:
			pe.Peer = strconv.FormatUint(uint64(k.Peer.ID), 10)
			pe.PeerLabels = s.policy.Labels(k.Peer.ID)
		}
		out.Entries = append(out.Entries, pe)
	}
	return out
}

func compareKeys(a, b policy.Key) int {
	return cmp.Or(cmp.Compare(a.Peer.ID, b.Peer.ID), cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
}

// TracePolicy implements agentv1.StatusServer.
func (s *Server) TracePolicy(_ context.Context, req *agentv1.TracePolicyRequest) (*agentv1.TracePolicyResponse, error) {
	if err := s.needPolicy(); err != nil {
		return nil, err
	}
	one := func(what, ep string) (policy.ID, error) {
		if ep == "" {
			return 0, status.Errorf(codes.InvalidArgument, "%s: missing", what)
		}
		ids, err := s.policy.Resolve(ep)
		switch {
		case err != nil:
			return 0, status.Errorf(codes.NotFound, "%s: %v", what, err)
		case len(ids) != 1:
			return 0, status.Errorf(codes.InvalidArgument, "%s %q names %d identities, want one", what, ep, len(ids))
		}
		return ids[0], nil
	}
	src, err := one("source", req.GetSrc())
	if err != nil {
		return nil, err
	}
	proto, ok := rules.ParseProtocol(req.GetProtocol(), ipproto.TCP)
	if !ok || req.GetDport() > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "bad port or protocol %d/%s", req.GetDport(), req.GetProtocol())
	}
	var service string
	if name, svc, ok := s.frontend(req.GetDst(), uint16(req.GetDport()), proto); ok {
		resp, err := s.traceService(src, name, svc)
		if err != nil || len(resp.GetBackends()) > 0 || !s.cfg.BesideKubeProxy {
			return resp, err
		}
		service = resp.GetService() // no backend: the packet goes on to the address
	}
	dst, err := one("destination", req.GetDst())
	if err != nil {
		return nil, err
	}
	r := s.policy.Trace(policy.Flow{Src: src, Dst: dst, Port: uint16(req.GetDport()), Proto: proto})
	return &agentv1.TracePolicyResponse{Allowed: r.Allowed, SrcIdentity: uint32(src), DstIdentity: uint32(dst),
		Egress: verdict(r.Egress), Ingress: verdict(r.Ingress), Service: service}, nil
}

func verdict(v policy.Verdict) *agentv1.TraceVerdict {
	out := &agentv1.TraceVerdict{Evaluated: v.Evaluated, Allowed: v.Allowed, Reason: v.Reason}
	if v.Rule != nil {
		out.Rule = v.Rule.String()
	}
	return out
}

// FetchPolicy asks the agent on socket for the resolved policy of endpoint.
func FetchPolicy(ctx context.Context, socket, endpoint string) (*agentv1.GetPolicyResponse, error) {
	var resp *agentv1.GetPolicyResponse
	err := withClient(ctx, socket, func(c agentv1.StatusClient) (err error) {
		resp, err = c.GetPolicy(ctx, &agentv1.GetPolicyRequest{Endpoint: endpoint})
		return err
	})
	return resp, err
}

// Trace asks the agent on socket to trace a flow.
func Trace(ctx context.Context, socket string, req *agentv1.TracePolicyRequest) (*agentv1.TracePolicyResponse, error) {
	var resp *agentv1.TracePolicyResponse
	err := withClient(ctx, socket, func(c agentv1.StatusClient) (err error) {
		resp, err = c.TracePolicy(ctx, req)
		return err
	})
	return resp, err
}

// PrintPolicy writes endpoints' policies as a table or JSON.
func PrintPolicy(w io.Writer, resp *agentv1.GetPolicyResponse, asJSON bool) error {
	if asJSON {
		return printProto(w, resp)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, ep := range resp.GetEndpoints() {
		fmt.Fprintf(tw, "IDENTITY %d\t%s\n", ep.GetIdentity(), ep.GetLabels())
		for _, d := range []struct {
			name string
			p    *agentv1.DirectionPolicy
		}{{"ingress", ep.GetIngress()}, {"egress", ep.GetEgress()}} {
			mode := "default allow"
			if d.p.GetEnforced() {
				mode = "default deny"
			}
			fmt.Fprintf(tw, "  %s\t%s\n", d.name, mode)
			for _, e := range d.p.GetEntries() {
				verdict := "allow"
				if e.GetDeny() {
					verdict = "deny"
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", verdict, peerString(e), portString(e), e.GetRule(), e.GetPeerLabels())
			}
		}
	}
	return tw.Flush()
}

func peerString(e *agentv1.PolicyEntry) string { return "peer " + e.GetPeer() }

func portString(e *agentv1.PolicyEntry) string {
	switch {
	case e.GetPort() == 0:
		return e.GetProtocol() + "/*"
	case e.GetEndPort() > e.GetPort():
		return fmt.Sprintf("%s/%d-%d", e.GetProtocol(), e.GetPort(), e.GetEndPort())
	}
	return fmt.Sprintf("%s/%d", e.GetProtocol(), e.GetPort())
}

// PrintTrace writes a trace's verdict.
func PrintTrace(w io.Writer, r *agentv1.TracePolicyResponse, asJSON bool) error {
	if asJSON {
		return printProto(w, r)
	}
	if r.GetService() != "" {
		printServiceTrace(w, r)
		return nil
	}
	fmt.Fprintf(w, "%s: identity %d -> identity %d\n", allowedWord(r.GetAllowed()), r.GetSrcIdentity(), r.GetDstIdentity())
	printVerdicts(w, "  ", r.GetEgress(), r.GetIngress())
	return nil
}

// printVerdicts prints the egress and ingress verdicts of a trace.
func printVerdicts(w io.Writer, indent string, egress, ingress *agentv1.TraceVerdict) {
	for _, v := range []struct {
		name string
		v    *agentv1.TraceVerdict
	}{{"egress at the source", egress}, {"ingress at the destination", ingress}} {
		switch {
		case !v.v.GetEvaluated():
			fmt.Fprintf(w, "%s%s: not evaluated here (%s)\n", indent, v.name, v.v.GetReason())
		case v.v.GetAllowed():
			fmt.Fprintf(w, "%s%s: allowed by %s\n", indent, v.name, ruleOr(v.v))
		default:
			fmt.Fprintf(w, "%s%s: denied by %s\n", indent, v.name, ruleOr(v.v))
		}
	}
}

func ruleOr(v *agentv1.TraceVerdict) string {
	if v.GetRule() != "" {
		return v.GetRule()
	}
	return v.GetReason()
}

func printProto(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// withClient dials the agent's socket and calls f.
func withClient(ctx context.Context, socket string, f func(agentv1.StatusClient) error) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %q: %w", socket, err)
	}
	defer conn.Close()
	if err := f(agentv1.NewStatusClient(conn)); err != nil {
		return fmt.Errorf("agent at %s: %w", socket, err)
	}
	return nil
}

// printPolicyStatus writes the policy part of the status table.
func printPolicyStatus(w io.Writer, p *agentv1.PolicyStatus) {
	if p == nil {
		return
	}
	fmt.Fprintf(w, "\nPolicies: %d programmed, %d refused, %d datapath failures, %d/%d CIDR identities\n",
		p.GetPolicies(), len(p.GetRefused()), p.GetFailures(), p.GetCidrIdentities(), p.GetCidrIdentitiesMax())
	printWorldIngress(w, p.GetWorldIngress())
	for _, r := range p.GetRefused() {
		fmt.Fprintf(w, "  refused %s: %s\n", r.GetPolicy(), r.GetReason())
	}
	if c := p.GetMapCapacity(); c > 0 {
		fmt.Fprintf(w, "  policy map: %d of %d keys\n", p.GetMapKeys(), c)
	}
	for _, o := range p.GetOverCapacity() {
		fmt.Fprintf(w, "  identity %d (%s) refused: its policy needs %d keys, the policy map is full (--bpf-policy-entries); in default deny\n",
			o.GetIdentity(), o.GetLabels(), o.GetKeys())
	}
	for _, c := range p.GetNamedPortConflicts() {
		fmt.Fprintf(w, "  named ports of identity %d (%s) disagree, rules naming them add nothing for it: %s\n",
			c.GetIdentity(), c.GetLabels(), strings.Join(c.GetNames(), "; "))
	}
	if len(p.GetDrops()) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  DROPPED BY\tDIRECTION\tSOURCE CLUSTER\tPACKETS")
	for _, d := range p.GetDrops() {
		fmt.Fprintf(tw, "  %s\t%s\t%s (%d)\t%d\n", d.GetPolicy(), d.GetDirection(), d.GetSourceCluster(), d.GetSourceClusterId(), d.GetCount())
	}
	_ = tw.Flush()
}
