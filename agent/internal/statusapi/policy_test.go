package statusapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// enginePolicy serves a real engine; endpoints are identity numbers.
type enginePolicy struct{ e *policy.Engine }

func (p enginePolicy) Resolve(ep string) ([]policy.ID, error) {
	if ep == "" {
		var ids []policy.ID
		for id := range p.e.Snapshot() {
			ids = append(ids, id)
		}
		return ids, nil
	}
	n, err := strconv.ParseUint(ep, 10, 32)
	if err != nil {
		return nil, errors.New("no such endpoint")
	}
	return []policy.ID{policy.ID(n)}, nil
}
func (p enginePolicy) Endpoint(id policy.ID) (policy.EndpointPolicy, bool) { return p.e.Endpoint(id) }
func (p enginePolicy) Labels(id policy.ID) string {
	i, _ := p.e.Identity(id)
	return i.Labels.String()
}
func (p enginePolicy) Trace(f policy.Flow) policy.TraceResult { return p.e.Trace(f) }
func (enginePolicy) Refusals() []policywatch.Refusal {
	return []policywatch.Refusal{{Policy: "cnp/shop/l7", Reason: "L7 rules are not enforceable"}}
}
func (enginePolicy) Policies() int              { return 1 }
func (enginePolicy) Failures() int              { return 0 }
func (enginePolicy) CIDRIdentities() (int, int) { return 2, 65536 }
func (enginePolicy) MapUse() policysync.MapUse {
	return policysync.MapUse{Capacity: 10, Used: 4, Refusals: 1, Refused: []policysync.RefusedSubject{{Subject: 65794, Keys: 9}}}
}

func (enginePolicy) Drops() map[policysync.DropKey]uint64 {
	return map[policysync.DropKey]uint64{{Policy: policysync.DefaultDeny, SrcCluster: 3}: 7}
}
func (p enginePolicy) NamedPortConflicts() map[policy.ID][]string { return p.e.NamedPortConflicts() }

// servePolicy runs a Server of services on a socket until the test ends,
// set up by setup first, and returns a context for its clients and the
// socket once it listens.
func servePolicy(t *testing.T, services Services, setup func(*Server)) (context.Context, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	s := New(Config{Socket: sock, ClusterName: "c1", ClusterID: 1, NodeName: "n1"}, fakes{}, services, fakes{}, slog.New(slog.DiscardHandler))
	setup(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.Until(t, 10*time.Second, "socket", func() (bool, string) { _, err := os.Stat(sock); return err == nil, "" })
	return ctx, sock
}

// TestPolicyOverSocket serves the policy of a real engine and reads it back
// through the client functions the agent's policy commands use.
func TestPolicyOverSocket(t *testing.T) {
	const web, client2, client3 = policy.ID(1<<16 | 256), policy.ID(2<<16 | 256), policy.ID(3<<16 | 256)
	e := policy.New(policy.Config{ClusterName: "c1"})
	for id, l := range map[policy.ID]string{web: "web,c1", client2: "client,c2", client3: "client,c3"} {
		app, cluster, _ := strings.Cut(l, ",")
		e.UpsertIdentity(policy.Identity{ID: id, Labels: selector.MustParseLabels("k8s:app="+app,
			"k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster="+cluster)})
	}
	pol, err := rules.Decode([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"web","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}}`),
		rules.Options{ClusterName: "c1", DefaultLocalCluster: true})
	if err != nil {
		t.Fatal(err)
	}
	e.UpsertPolicy(pol)
	for _, port := range []uint16{8080, 8081} { // two endpoints of web disagree on "http"
		e.UpdateEndpointPorts(policy.EndpointPorts{}, policy.EndpointPorts{ID: web, Ports: []policy.NamedPort{{Name: "http", Port: port, Proto: ipproto.TCP}}})
	}

	ctx, sock := servePolicy(t, fakes{}, func(s *Server) {
		s.SetPolicy(enginePolicy{e})
		s.SetWorldIngress(func() WorldIngress {
			return WorldIngress{Enforced: true, State: "decided outside the cluster ranges", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, NodePodCIDRs: 3}
		})
	})

	got, err := FetchPolicy(ctx, sock, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetEndpoints()) != 1 || got.GetEndpoints()[0].GetIdentity() != uint32(web) {
		t.Fatalf("endpoints %v, want web only", got.GetEndpoints())
	}
	in := got.GetEndpoints()[0].GetIngress()
	if !in.GetEnforced() || len(in.GetEntries()) != 1 || in.GetEntries()[0].GetPeer() != strconv.Itoa(int(client2)) ||
		in.GetEntries()[0].GetPort() != 80 || in.GetEntries()[0].GetRule() != "cnp/shop/web ingress[0]" {
		t.Errorf("ingress %v", in)
	}
	var buf bytes.Buffer
	if err := PrintPolicy(&buf, got, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "TCP/80") || !strings.Contains(buf.String(), "peer "+strconv.Itoa(int(client2))) {
		t.Errorf("table:\n%s", buf.String())
	}

	for _, tc := range []struct {
		name    string
		src     policy.ID
		port    uint32
		allowed bool
		rule    string
	}{
		{"c2 client on 80", client2, 80, true, "cnp/shop/web ingress[0]"},
		{"c2 client on 81", client2, 81, false, ""},
		{"c3 client on 80", client3, 80, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(ctx, sock, &agentv1.TracePolicyRequest{Src: strconv.Itoa(int(tc.src)), Dst: strconv.Itoa(int(web)), Dport: tc.port, Protocol: "TCP"})
			if err != nil {
				t.Fatal(err)
			}
			if r.GetAllowed() != tc.allowed || r.GetIngress().GetRule() != tc.rule || !r.GetIngress().GetEvaluated() || r.GetEgress().GetEvaluated() {
				t.Errorf("trace = %v, want allowed %v by %q", r, tc.allowed, tc.rule)
			}
		})
	}
	if _, err := Trace(ctx, sock, &agentv1.TracePolicyRequest{Src: "nope", Dst: "1"}); err == nil {
		t.Errorf("trace of an unknown source: no error")
	}

	st, err := Fetch(ctx, sock, false)
	if err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := PrintTable(&buf, st); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Policies: 1 programmed, 1 refused, 0 datapath failures, 2/65536 CIDR identities", "refused cnp/shop/l7: L7 rules", "DROPPED BY", "(default deny)",
		"named ports of identity 65792 (k8s:app=web", "http: 8080/TCP on 1 of 2 endpoints, 8081/TCP on 1 of 2 endpoints",
		"policy map: 4 of 10 keys", "identity 65794 () refused: its policy needs 9 keys, the policy map is full",
		"world ingress: enforced: decided outside the cluster ranges", "cluster CIDRs: 10.244.0.0/16; node pod CIDRs: 3"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, buf.String())
		}
	}
}
