package policywatch_test

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// ipcacheRecorder is the ipcache of CIDR identities as the watcher programs
// it (prefix → identity).
type ipcacheRecorder struct {
	mu sync.Mutex
	m  map[netip.Prefix]uint32
}

func (r *ipcacheRecorder) UpsertCIDR(p netip.Prefix, id uint32) {
	r.mu.Lock()
	r.m[p] = id
	r.mu.Unlock()
}

func (r *ipcacheRecorder) DeleteCIDR(p netip.Prefix) {
	r.mu.Lock()
	delete(r.m, p)
	r.mu.Unlock()
}

func (r *ipcacheRecorder) snapshot() map[netip.Prefix]uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.m)
}

// TestCIDRPoliciesFromAPIServer: CIDR peers of a CiliumNetworkPolicy and a
// NetworkPolicy get CIDR identities, shared by prefix and programmed in
// the ipcache; the endpoint's keys name them (the except prefix's
// identity is not allowed); a policy that would exceed the identity bound
// is refused and changes nothing, until another policy frees room (it is
// retried); deleting policies frees the identities no other policy names,
// from the ipcache and the engine.
func TestCIDRPoliciesFromAPIServer(t *testing.T) {
	dc, ctx := apiServer(t)
	const web = policy.ID(1<<16 | 256)
	s := &sink{state: map[policy.ID]policy.EndpointPolicy{}}
	ipc := &ipcacheRecorder{m: map[netip.Prefix]uint32{}}
	opts := rules.DefaultOptions()
	opts.ClusterName = "c1"
	engine := policy.New(policy.Config{ClusterName: "c1"})
	w := policywatch.New(policywatch.Config{Options: opts, IPCache: ipc, MaxCIDRIdentities: 4}, dc, engine, s, slog.New(slog.DiscardHandler))
	w.UpsertIdentity(uint32(web), labels(t, "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;"))
	runWatcher(ctx, t, w)

	cnp := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"ext","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}}`
	knp := `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"block","namespace":"shop"},"spec":{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"ipBlock":{"cidr":"10.2.0.0/16"}}]}]}}`
	tooMany := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"many","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromCIDR":["192.0.2.0/24","198.51.100.0/24"]}]}}`

	// expect waits for the programmed prefixes and web's ingress keys,
	// written "<proto>/<port> from <prefix>" with the prefix of the peer's
	// CIDR identity.
	expect := func(what string, prefixes []string, keys []string) map[netip.Prefix]uint32 {
		t.Helper()
		var m map[netip.Prefix]uint32
		testwait.Until(t, 30*time.Second, what, func() (bool, string) {
			m = ipc.snapshot()
			byID := map[policy.ID]string{}
			var got []string
			for p, id := range m {
				got = append(got, p.String())
				byID[policy.ID(id)] = p.String()
				if !selector.IsLocalScope(policy.ID(id)) {
					return false, fmt.Sprintf("identity %d of %s is not local scope", id, p)
				}
				if i, ok := engine.Identity(policy.ID(id)); !ok || !i.Labels.Equal(selector.CIDRLabels(p)) {
					return false, fmt.Sprintf("engine has no identity %d for %s", id, p)
				}
			}
			slices.Sort(got)
			s.mu.Lock()
			var k []string
			for key, e := range s.state[web][rules.Ingress].Entries {
				if !e.Deny {
					k = append(k, fmt.Sprintf("%s/%d from %s", key.Proto, key.Port, byID[key.Peer.ID]))
				}
			}
			s.mu.Unlock()
			slices.Sort(k)
			return slices.Equal(got, prefixes) && slices.Equal(k, keys), fmt.Sprintf("prefixes %v keys %v", got, k)
		})
		return m
	}

	createOrUpdate(ctx, t, dc, policywatch.GVRCiliumPolicy, "shop", cnp)
	first := expect("cnp with except", []string{"10.0.0.0/8", "10.1.0.0/16"}, []string{"TCP/80 from 10.0.0.0/8"})
	createOrUpdate(ctx, t, dc, policywatch.GVRNetworkPolicy, "shop", knp)
	both := expect("and an ipBlock", []string{"10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"},
		[]string{"ANY/0 from 10.2.0.0/16", "TCP/80 from 10.0.0.0/8", "TCP/80 from 10.2.0.0/16"})
	if both[netip.MustParsePrefix("10.0.0.0/8")] != first[netip.MustParsePrefix("10.0.0.0/8")] {
		t.Errorf("a second policy changed the identity of 10.0.0.0/8")
	}

	createOrUpdate(ctx, t, dc, policywatch.GVRCiliumPolicy, "shop", tooMany)
	testwait.Until(t, 30*time.Second, "the policy over the bound refused", func() (bool, string) {
		r := w.Refusals()
		return len(r) == 1 && r[0].Policy == "cnp/shop/many" && strings.Contains(r[0].Reason, "exhausted"), fmt.Sprint(r)
	})
	expect("the refusal changes nothing", []string{"10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"},
		[]string{"ANY/0 from 10.2.0.0/16", "TCP/80 from 10.0.0.0/8", "TCP/80 from 10.2.0.0/16"})

	if err := dc.Resource(policywatch.GVRCiliumPolicy).Namespace("shop").Delete(ctx, "ext", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("the cnp's own prefixes freed, the refused policy accepted on retry", []string{"10.2.0.0/16", "192.0.2.0/24", "198.51.100.0/24"},
		[]string{"ANY/0 from 10.2.0.0/16", "ANY/0 from 192.0.2.0/24", "ANY/0 from 198.51.100.0/24"})
	if r := w.Refusals(); len(r) != 0 {
		t.Errorf("refusals once there is room: %v", r)
	}
	for p, id := range both {
		if p != netip.MustParsePrefix("10.2.0.0/16") {
			if _, ok := engine.Identity(policy.ID(id)); ok {
				t.Errorf("freed identity %d of %s still in the engine", id, p)
			}
		}
	}
	if err := dc.Resource(policywatch.GVRCiliumPolicy).Namespace("shop").Delete(ctx, "many", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dc.Resource(policywatch.GVRNetworkPolicy).Namespace("shop").Delete(ctx, "block", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("every prefix freed", nil, nil)
	if w.Failures() != 0 || len(w.Refusals()) != 0 {
		t.Errorf("failures %d, refusals %v", w.Failures(), w.Refusals())
	}
}
