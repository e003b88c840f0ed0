package rules

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// translateKNP translates a networking.k8s.io/v1 NetworkPolicy with upstream
// semantics: policyTypes defaults to Ingress, plus Egress when egress rules
// exist; a rule with no from/to admits every peer; a rule with no ports
// admits every port; a port without protocol is TCP; a peer is an ipBlock,
// or pods chosen by podSelector (policy namespace) and/or namespaceSelector.
func translateKNP(key, namespace string, raw json.RawMessage, opts Options) (Policy, error) {
	t := &translator{key: key, namespace: namespace, opts: opts}
	var spec networkingv1.NetworkPolicySpec
	if present(raw) {
		if err := strictUnmarshal(raw, &spec); err != nil {
			return Policy{}, t.refuse("spec", err.Error(), ErrInvalid)
		}
	}
	subject, err := t.k8sSelector("spec.podSelector", &spec.PodSelector, "k8s:")
	if err != nil {
		return Policy{}, err
	}
	s := Spec{Subject: subject.And(t.nsMatch())}
	types := spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for i, pt := range types {
		switch pt {
		case networkingv1.PolicyTypeIngress:
			s.DefaultDeny[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			s.DefaultDeny[Egress] = true
		default:
			return Policy{}, t.refuse(fmt.Sprintf("spec.policyTypes[%d]", i), fmt.Sprintf("unknown policy type %q", pt), ErrInvalid)
		}
	}
	if s.DefaultDeny[Ingress] {
		for i, in := range spec.Ingress {
			r, err := t.knpRule(fmt.Sprintf("spec.ingress[%d]", i), Ingress, in.From, in.Ports)
			if err != nil {
				return Policy{}, err
			}
			r.Index = i
			s.Rules = append(s.Rules, r)
		}
	}
	if s.DefaultDeny[Egress] {
		for i, eg := range spec.Egress {
			r, err := t.knpRule(fmt.Sprintf("spec.egress[%d]", i), Egress, eg.To, eg.Ports)
			if err != nil {
				return Policy{}, err
			}
			r.Index = i
			s.Rules = append(s.Rules, r)
		}
	}
	return Policy{Key: key, Specs: []Spec{s}}, nil
}

func (t *translator) knpRule(path string, dir Direction, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (Rule, error) {
	r := Rule{Direction: dir, Peers: Peers{All: len(peers) == 0}}
	pfx := "from"
	if dir == Egress {
		pfx = "to"
	}
	var prefixes []cidrPeer
	cidrField := ""
	for i, p := range peers {
		f := fmt.Sprintf("%s.%s[%d]", path, pfx, i)
		if p.IPBlock != nil {
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				return Rule{}, t.refuse(f, "ipBlock cannot be combined with podSelector or namespaceSelector", ErrInvalid)
			}
			ps, err := cidrSet(p.IPBlock.CIDR, p.IPBlock.Except)
			if err != nil {
				return Rule{}, t.refuse(f+".ipBlock", err.Error(), ErrInvalid)
			}
			prefixes, cidrField = append(prefixes, ps), cmp.Or(cidrField, f+".ipBlock")
			continue
		}
		if p.PodSelector == nil && p.NamespaceSelector == nil {
			return Rule{}, t.refuse(f, "a peer needs ipBlock, podSelector or namespaceSelector", ErrInvalid)
		}
		sel := selector.Selector{}
		if p.PodSelector != nil {
			ps, err := t.k8sSelector(f+".podSelector", p.PodSelector, "k8s:")
			if err != nil {
				return Rule{}, err
			}
			sel = ps
		}
		if p.NamespaceSelector != nil {
			ns, err := t.k8sSelector(f+".namespaceSelector", p.NamespaceSelector, "k8s:"+selector.NamespaceLabelsPrefix)
			if err != nil {
				return Rule{}, err
			}
			for _, req := range ns.Requirements() {
				sel = sel.And(req)
			}
			sel = sel.And(selector.Requirement{Source: selector.SourceK8s, Key: selector.NamespaceLabel, Op: selector.OpExists})
		}
		r.Peers.Selectors = append(r.Peers.Selectors, t.peer(sel))
	}
	if err := t.cidrs(&r, cidrField, prefixes); err != nil {
		return Rule{}, err
	}
	for i, p := range ports {
		f := fmt.Sprintf("%s.ports[%d]", path, i)
		proto := ipproto.TCP
		if p.Protocol != nil {
			var ok bool
			if proto, ok = ParseProtocol(string(*p.Protocol), ipproto.TCP); !ok || proto == ipproto.Any {
				return Rule{}, t.refuse(f+".protocol", fmt.Sprintf("protocol %q (TCP, UDP or SCTP)", *p.Protocol), ErrInvalid)
			}
		}
		var end int32
		if p.EndPort != nil {
			end = *p.EndPort
		}
		port := ""
		if p.Port != nil {
			if p.Port.Type == intstr.Int {
				if p.Port.IntVal == 0 {
					return Rule{}, t.refuse(f+".port", "port 0", ErrInvalid)
				}
				port = fmt.Sprint(p.Port.IntVal)
			} else {
				port = p.Port.StrVal
				if port == "" || port == "0" {
					return Rule{}, t.refuse(f+".port", "empty port name", ErrInvalid)
				}
			}
		}
		pp, err := portSpec(port, end, proto)
		if err != nil {
			return Rule{}, t.refuse(f, err.Error(), ErrInvalid)
		}
		r.Ports = append(r.Ports, pp)
	}
	return r, nil
}

// k8sSelector converts a metav1.LabelSelector, prefixing every key.
func (t *translator) k8sSelector(field string, ls *metav1.LabelSelector, prefix string) (selector.Selector, error) {
	ml := make(map[string]string, len(ls.MatchLabels))
	for k, v := range ls.MatchLabels {
		ml[prefix+k] = v
	}
	exprs := make([]selector.Expression, 0, len(ls.MatchExpressions))
	for _, e := range ls.MatchExpressions {
		exprs = append(exprs, selector.Expression{Key: prefix + e.Key, Operator: selector.Operator(e.Operator), Values: slices.Clone(e.Values)})
	}
	return t.selector(field, labelSelector{MatchLabels: ml, MatchExpressions: exprs})
}
