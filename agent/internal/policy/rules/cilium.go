package rules

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// The JSON form of cilium.io/v2 rules, with Cilium's field names. Fields the
// datapath cannot enforce are kept raw so that their presence refuses the
// policy with a precise reason instead of an unknown-field error.

type labelSelector struct {
	MatchLabels      map[string]string     `json:"matchLabels,omitempty"`
	MatchExpressions []selector.Expression `json:"matchExpressions,omitempty"`
}

type cnpRule struct {
	EndpointSelector  *labelSelector     `json:"endpointSelector"`
	Ingress           []cnpIngress       `json:"ingress"`
	IngressDeny       []cnpIngress       `json:"ingressDeny"`
	Egress            []cnpEgress        `json:"egress"`
	EgressDeny        []cnpEgress        `json:"egressDeny"`
	EnableDefaultDeny *enableDefaultDeny `json:"enableDefaultDeny"`
	Description       string             `json:"description"`
	Labels            json.RawMessage    `json:"labels"` // rule metadata, no effect on enforcement

	NodeSelector json.RawMessage `json:"nodeSelector"`
	Log          json.RawMessage `json:"log"`
}

type enableDefaultDeny struct {
	Ingress *bool `json:"ingress"`
	Egress  *bool `json:"egress"`
}

type cnpIngress struct {
	FromEndpoints []labelSelector `json:"fromEndpoints"`
	FromCIDR      []string        `json:"fromCIDR"`
	FromCIDRSet   []cidrRule      `json:"fromCIDRSet"`
	FromEntities  []string        `json:"fromEntities"`
	ToPorts       []portRule      `json:"toPorts"`

	FromRequires   json.RawMessage `json:"fromRequires"`
	FromGroups     json.RawMessage `json:"fromGroups"`
	FromNodes      json.RawMessage `json:"fromNodes"`
	ICMPs          json.RawMessage `json:"icmps"`
	Authentication json.RawMessage `json:"authentication"`
}

type cnpEgress struct {
	ToEndpoints []labelSelector `json:"toEndpoints"`
	ToCIDR      []string        `json:"toCIDR"`
	ToCIDRSet   []cidrRule      `json:"toCIDRSet"`
	ToEntities  []string        `json:"toEntities"`
	ToPorts     []portRule      `json:"toPorts"`

	ToRequires     json.RawMessage `json:"toRequires"`
	ToServices     json.RawMessage `json:"toServices"`
	ToFQDNs        json.RawMessage `json:"toFQDNs"`
	ToGroups       json.RawMessage `json:"toGroups"`
	ToNodes        json.RawMessage `json:"toNodes"`
	ICMPs          json.RawMessage `json:"icmps"`
	Authentication json.RawMessage `json:"authentication"`
}

type cidrRule struct {
	CIDR              string          `json:"cidr"`
	Except            []string        `json:"except"`
	CIDRGroupRef      json.RawMessage `json:"cidrGroupRef"`
	CIDRGroupSelector json.RawMessage `json:"cidrGroupSelector"`
}

type portRule struct {
	Ports          []portProtocol  `json:"ports"`
	Rules          json.RawMessage `json:"rules"`
	ServerNames    json.RawMessage `json:"serverNames"`
	Listener       json.RawMessage `json:"listener"`
	OriginatingTLS json.RawMessage `json:"originatingTLS"`
	TerminatingTLS json.RawMessage `json:"terminatingTLS"`
}

type portProtocol struct {
	Port     string `json:"port"`
	EndPort  int32  `json:"endPort"`
	Protocol string `json:"protocol"`
}

// translator carries the context of one policy's translation.
type translator struct {
	key       string
	namespace string // "" for clusterwide
	opts      Options
	prefixes  map[netip.Prefix]struct{} // distinct CIDR prefixes named so far (MaxCIDRPrefixes)
}

func (t *translator) refuse(field, reason string, err error) error {
	return &RefusedError{Policy: t.key, Field: field, Reason: reason, Err: err}
}

// unsupported refuses when any of the named raw fields is present.
func (t *translator) unsupported(path string, fields map[string]json.RawMessage, why string) error {
	for _, name := range sortedKeys(fields) {
		if present(fields[name]) {
			return t.refuse(path+"."+name, why, ErrUnsupported)
		}
	}
	return nil
}

func translateCNP(key, namespace string, spec, specs json.RawMessage, opts Options) (Policy, error) {
	t := &translator{key: key, namespace: namespace, opts: opts}
	var rules []cnpRule
	var paths []string
	if present(spec) {
		var r cnpRule
		if err := strictUnmarshal(spec, &r); err != nil {
			return Policy{}, t.refuse("spec", err.Error(), ErrInvalid)
		}
		rules, paths = append(rules, r), append(paths, "spec")
	}
	if present(specs) {
		var rs []cnpRule
		if err := strictUnmarshal(specs, &rs); err != nil {
			return Policy{}, t.refuse("specs", err.Error(), ErrInvalid)
		}
		for i, r := range rs {
			rules, paths = append(rules, r), append(paths, fmt.Sprintf("specs[%d]", i))
		}
	}
	if len(rules) == 0 {
		return Policy{}, t.refuse("spec", "neither spec nor specs", ErrInvalid)
	}
	p := Policy{Key: key, Specs: make([]Spec, 0, len(rules))}
	for i, r := range rules {
		s, err := t.rule(paths[i], r)
		if err != nil {
			return Policy{}, err
		}
		p.Specs = append(p.Specs, s)
	}
	return p, nil
}

func (t *translator) rule(path string, r cnpRule) (Spec, error) {
	if err := t.unsupported(path, map[string]json.RawMessage{"nodeSelector": r.NodeSelector, "log": r.Log},
		"host policies and policy logging are not enforced"); err != nil {
		return Spec{}, err
	}
	if r.EndpointSelector == nil {
		return Spec{}, t.refuse(path+".endpointSelector", "missing endpointSelector", ErrInvalid)
	}
	subject, err := t.selector(path+".endpointSelector", *r.EndpointSelector)
	if err != nil {
		return Spec{}, err
	}
	if t.namespace != "" {
		subject = subject.Without(selector.NamespaceLabel).And(t.nsMatch())
	}
	s := Spec{Subject: subject}
	s.DefaultDeny[Ingress] = len(r.Ingress)+len(r.IngressDeny) > 0
	s.DefaultDeny[Egress] = len(r.Egress)+len(r.EgressDeny) > 0
	if d := r.EnableDefaultDeny; d != nil {
		if d.Ingress != nil {
			s.DefaultDeny[Ingress] = *d.Ingress
		}
		if d.Egress != nil {
			s.DefaultDeny[Egress] = *d.Egress
		}
	}
	for _, list := range []struct {
		name string
		rs   []cnpIngress
		deny bool
	}{{"ingress", r.Ingress, false}, {"ingressDeny", r.IngressDeny, true}} {
		for i, in := range list.rs {
			rule, err := t.ingress(fmt.Sprintf("%s.%s[%d]", path, list.name, i), in, list.deny)
			if err != nil {
				return Spec{}, err
			}
			rule.Index = i
			s.Rules = append(s.Rules, rule)
		}
	}
	for _, list := range []struct {
		name string
		rs   []cnpEgress
		deny bool
	}{{"egress", r.Egress, false}, {"egressDeny", r.EgressDeny, true}} {
		for i, eg := range list.rs {
			rule, err := t.egress(fmt.Sprintf("%s.%s[%d]", path, list.name, i), eg, list.deny)
			if err != nil {
				return Spec{}, err
			}
			rule.Index = i
			s.Rules = append(s.Rules, rule)
		}
	}
	return s, nil
}

func (t *translator) ingress(path string, in cnpIngress, deny bool) (Rule, error) {
	if err := t.unsupported(path, map[string]json.RawMessage{
		"fromRequires": in.FromRequires, "fromGroups": in.FromGroups, "fromNodes": in.FromNodes,
		"icmps": in.ICMPs, "authentication": in.Authentication,
	}, "not enforceable by the datapath"); err != nil {
		return Rule{}, err
	}
	hasPeers := in.FromEndpoints != nil || in.FromCIDR != nil || in.FromCIDRSet != nil || in.FromEntities != nil
	return t.l3l4(path, Ingress, deny, "from", hasPeers, in.FromEndpoints, in.FromEntities, in.FromCIDR, in.FromCIDRSet, in.ToPorts)
}

func (t *translator) egress(path string, eg cnpEgress, deny bool) (Rule, error) {
	if err := t.unsupported(path, map[string]json.RawMessage{
		"toRequires": eg.ToRequires, "toServices": eg.ToServices, "toFQDNs": eg.ToFQDNs,
		"toGroups": eg.ToGroups, "toNodes": eg.ToNodes, "icmps": eg.ICMPs, "authentication": eg.Authentication,
	}, "not enforceable by the datapath"); err != nil {
		return Rule{}, err
	}
	hasPeers := eg.ToEndpoints != nil || eg.ToCIDR != nil || eg.ToCIDRSet != nil || eg.ToEntities != nil
	return t.l3l4(path, Egress, deny, "to", hasPeers, eg.ToEndpoints, eg.ToEntities, eg.ToCIDR, eg.ToCIDRSet, eg.ToPorts)
}

// l3l4 translates the common part of a rule. A rule that names no peer
// but has toPorts applies to every peer on those ports (Cilium's L4-only
// rule); a rule with neither selects nothing.
func (t *translator) l3l4(path string, dir Direction, deny bool, pfx string, hasPeers bool,
	eps []labelSelector, entities, cidrs []string, sets []cidrRule, ports []portRule) (Rule, error) {
	r := Rule{Direction: dir, Deny: deny}
	for i, ls := range eps {
		f := fmt.Sprintf("%s.%sEndpoints[%d]", path, pfx, i)
		sel, err := t.selector(f, ls)
		if err != nil {
			return Rule{}, err
		}
		r.Peers.Selectors = append(r.Peers.Selectors, t.peer(sel))
	}
	for i, e := range entities {
		sels, err := selector.EntitySelectors(e, t.opts.ClusterName)
		if err != nil {
			return Rule{}, t.refuse(fmt.Sprintf("%s.%sEntities[%d]", path, pfx, i), err.Error(), ErrInvalid)
		}
		if e == selector.EntityAll {
			r.Peers.All = true
			continue
		}
		r.Peers.Selectors = append(r.Peers.Selectors, sels...)
	}
	var prefixes []cidrPeer
	cidrField := ""
	for i, c := range cidrs {
		f := fmt.Sprintf("%s.%sCIDR[%d]", path, pfx, i)
		ps, err := cidrSet(c, nil)
		if err != nil {
			return Rule{}, t.refuse(f, err.Error(), ErrInvalid)
		}
		prefixes, cidrField = append(prefixes, ps), cmp.Or(cidrField, f)
	}
	for i, s := range sets {
		f := fmt.Sprintf("%s.%sCIDRSet[%d]", path, pfx, i)
		if err := t.unsupported(f, map[string]json.RawMessage{"cidrGroupRef": s.CIDRGroupRef, "cidrGroupSelector": s.CIDRGroupSelector},
			"CIDR groups are not supported"); err != nil {
			return Rule{}, err
		}
		ps, err := cidrSet(s.CIDR, s.Except)
		if err != nil {
			return Rule{}, t.refuse(f, err.Error(), ErrInvalid)
		}
		prefixes, cidrField = append(prefixes, ps), cmp.Or(cidrField, f)
	}
	if err := t.cidrs(&r, cidrField, prefixes); err != nil {
		return Rule{}, err
	}
	if !hasPeers && len(ports) > 0 {
		r.Peers.All = true
	}
	for i, pr := range ports {
		f := fmt.Sprintf("%s.toPorts[%d]", path, i)
		if err := t.unsupported(f, map[string]json.RawMessage{
			"rules": pr.Rules, "serverNames": pr.ServerNames, "listener": pr.Listener,
			"originatingTLS": pr.OriginatingTLS, "terminatingTLS": pr.TerminatingTLS,
		}, "L7 and TLS rules need a proxy; the datapath enforces L3/L4 only"); err != nil {
			return Rule{}, err
		}
		if len(pr.Ports) == 0 {
			r.Ports = append(r.Ports, Port{})
		}
		for j, pp := range pr.Ports {
			pf := fmt.Sprintf("%s.ports[%d]", f, j)
			proto, ok := ParseProtocol(pp.Protocol, ipproto.Any)
			if !ok {
				return Rule{}, t.refuse(pf+".protocol", fmt.Sprintf("protocol %q (supported: TCP, UDP, SCTP, ANY)", pp.Protocol), ErrUnsupported)
			}
			p, err := portSpec(pp.Port, pp.EndPort, proto)
			if err != nil {
				return Rule{}, t.refuse(pf, err.Error(), ErrInvalid)
			}
			r.Ports = append(r.Ports, p)
		}
	}
	return r, nil
}

func (t *translator) selector(field string, ls labelSelector) (selector.Selector, error) {
	s, err := selector.New(ls.MatchLabels, ls.MatchExpressions)
	if err != nil {
		return selector.Selector{}, t.refuse(field, err.Error(), ErrInvalid)
	}
	return s, nil
}

func (t *translator) nsMatch() selector.Requirement {
	return selector.Requirement{Source: selector.SourceK8s, Key: selector.NamespaceLabel, Op: selector.OpIn, Values: []string{t.namespace}}
}

// peer applies Cilium's scoping to a peer endpoint selector: namespace of
// the policy (or any namespace for clusterwide policies) unless the selector
// names a namespace, then the local cluster when DefaultLocalCluster is on
// and the selector names no cluster. Selectors of reserved labels are kept.
func (t *translator) peer(s selector.Selector) selector.Selector {
	if s.HasSource(selector.SourceReserved) {
		return s
	}
	if !s.HasKey(selector.NamespaceLabel) {
		switch {
		case t.namespace == "":
			s = s.And(selector.Requirement{Source: selector.SourceK8s, Key: selector.NamespaceLabel, Op: selector.OpExists})
		case !s.HasKeyPrefix(selector.NamespaceLabelsPrefix):
			s = s.And(t.nsMatch())
		}
	}
	if t.opts.DefaultLocalCluster && !s.HasKey(selector.ClusterLabel) {
		s = s.And(selector.Requirement{Source: selector.SourceK8s, Key: selector.ClusterLabel, Op: selector.OpIn, Values: []string{t.opts.ClusterName}})
	}
	return s
}
