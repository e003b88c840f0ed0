package policywatch_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sink folds diffs into a state, as a datapath would.
type sink struct {
	mu    sync.Mutex
	state map[policy.ID]policy.EndpointPolicy
	any   bool
}

func (s *sink) Apply(d policy.Diff) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	policy.Apply(s.state, d)
	return nil
}

func (s *sink) SetAnyPolicy(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.any = on
	return nil
}

// ingress returns the ingress mode of an endpoint and its peers' ports.
func (s *sink) ingress(id policy.ID) (bool, []string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep := s.state[id][rules.Ingress]
	var keys []string
	for k, e := range ep.Entries {
		v := "allow"
		if e.Deny {
			v = "deny"
		}
		keys = append(keys, k.Proto.String()+"/"+itoa(k.Port)+" from "+itoa(uint16(k.Peer.ID&0xffff))+" "+v)
	}
	slices.Sort(keys)
	return ep.Enforced, keys, s.any
}

func itoa(v uint16) string { b, _ := json.Marshal(v); return string(b) }

func labels(t *testing.T, s string) wire.Labels {
	t.Helper()
	ls, err := wire.ParseLabels(s)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// apiServer starts a kube-apiserver with the chart's CRDs and a "shop"
// namespace; the context ends with the test.
func apiServer(t *testing.T) (dynamic.Interface, context.Context) {
	t.Helper()
	cp := kubetest.StartForTest(t, kubetest.Config{Name: "policywatch"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	dc, err := dynamic.NewForConfig(cp.REST)
	if err != nil {
		t.Fatal(err)
	}
	if err := kubetest.InstallCRDs(ctx, dc, deploy.ChartFS(), "crds/ciliumnetworkpolicies.yaml", "crds/ciliumclusterwidenetworkpolicies.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.EnsureNamespace(ctx, cp.Client, "shop"); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, time.Minute, "CRDs served", func() (bool, string) {
		_, err1 := dc.Resource(policywatch.GVRCiliumPolicy).Namespace("shop").List(ctx, metav1.ListOptions{})
		_, err2 := dc.Resource(policywatch.GVRClusterwide).List(ctx, metav1.ListOptions{})
		return err1 == nil && err2 == nil, ""
	})
	return dc, ctx
}

// runWatcher runs w until the test ends.
func runWatcher(ctx context.Context, t *testing.T, w *policywatch.Watcher) {
	t.Helper()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
}

// createOrUpdate writes a policy object given as JSON.
func createOrUpdate(ctx context.Context, t *testing.T, dc dynamic.Interface, gvr schema.GroupVersionResource, ns, js string) {
	t.Helper()
	var obj map[string]any
	if err := json.Unmarshal([]byte(js), &obj); err != nil {
		t.Fatal(err)
	}
	ri := dc.Resource(gvr).Namespace(ns)
	u := &unstructured.Unstructured{Object: obj}
	if old, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{}); err == nil {
		u.SetResourceVersion(old.GetResourceVersion())
		_, err = ri.Update(ctx, u, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPoliciesFromAPIServer creates policies of the three kinds in a real
// kube-apiserver (with the chart's CRDs) and checks what the engine's diffs
// program: accepted policies apply, a policy with an L7 rule is refused with
// an Event and changes nothing (a new one is not added, a refused update
// keeps the accepted version), and deletes remove.
func TestPoliciesFromAPIServer(t *testing.T) {
	dc, ctx := apiServer(t)
	const (
		web     = policy.ID(1<<16 | 256)
		client1 = policy.ID(1<<16 | 257)
		client2 = policy.ID(2<<16 | 256)
	)
	s := &sink{state: map[policy.ID]policy.EndpointPolicy{}}
	var evMu sync.Mutex
	var events []string
	opts := rules.DefaultOptions()
	opts.ClusterName = "c1"
	w := policywatch.New(policywatch.Config{Options: opts, Event: func(u *unstructured.Unstructured, reason, msg string) {
		evMu.Lock()
		events = append(events, u.GetName()+" "+reason)
		evMu.Unlock()
	}}, dc, policy.New(policy.Config{ClusterName: "c1"}), s, slog.New(slog.DiscardHandler))
	w.UpsertIdentity(uint32(web), labels(t, "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;"))
	w.UpsertIdentity(uint32(client1), labels(t, "k8s:app=client;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;"))
	w.UpsertIdentity(uint32(client2), labels(t, "k8s:app=client;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=shop;"))
	runWatcher(ctx, t, w)

	create := func(gvr schema.GroupVersionResource, ns, js string) {
		t.Helper()
		createOrUpdate(ctx, t, dc, gvr, ns, js)
	}
	expect := func(what string, enforced bool, keys []string, any bool) {
		t.Helper()
		testwait.Until(t, 30*time.Second, what, func() (bool, string) {
			e, k, a := s.ingress(web)
			return e == enforced && slices.Equal(k, keys) && a == any, strings.Join(k, ", ")
		})
	}

	cnpC2 := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"web","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}}`
	cnpL7 := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"web","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"method":"GET"}]}}]}]}}`
	knp := `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"local","namespace":"shop"},"spec":{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"client"}}}],"ports":[{"port":8080}]}]}}`
	ccnpDeny := `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"deny"},"spec":{"endpointSelector":{},"ingressDeny":[{"fromEndpoints":[{"matchLabels":{"io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}}`

	expect("no policy", false, nil, false)
	create(policywatch.GVRCiliumPolicy, "shop", cnpC2)
	expect("cnp admits c2 clients", true, []string{"TCP/80 from 256 allow"}, true)

	create(policywatch.GVRCiliumPolicy, "shop", strings.Replace(cnpL7, `"name":"web"`, `"name":"l7"`, 1))
	testwait.Until(t, 30*time.Second, "L7 policy refused", func() (bool, string) {
		r := w.Refusals()
		return len(r) == 1 && r[0].Policy == "cnp/shop/l7" && strings.Contains(r[0].Reason, "rules"), ""
	})
	create(policywatch.GVRCiliumPolicy, "shop", cnpL7) // an update of "web" to an L7 rule
	testwait.Until(t, 30*time.Second, "L7 update refused", func() (bool, string) { return len(w.Refusals()) == 2, "" })
	expect("refusals change nothing", true, []string{"TCP/80 from 256 allow"}, true)
	evMu.Lock()
	if !slices.Contains(events, "l7 PolicyRefused") || !slices.Contains(events, "web PolicyRefused") {
		t.Errorf("events %v, want a PolicyRefused on l7 and web", events)
	}
	evMu.Unlock()

	create(policywatch.GVRNetworkPolicy, "shop", knp)
	create(policywatch.GVRClusterwide, "", ccnpDeny)
	// The clusterwide deny of c2 on TCP 80 replaces the cnp's allow of c2's
	// client (deny wins); the NetworkPolicy admits the local client only.
	expect("knp and ccnp deny", true, []string{"TCP/80 from 256 deny", "TCP/8080 from 257 allow"}, true)

	for _, d := range []struct {
		gvr      schema.GroupVersionResource
		ns, name string
	}{{policywatch.GVRCiliumPolicy, "shop", "web"}, {policywatch.GVRCiliumPolicy, "shop", "l7"}, {policywatch.GVRNetworkPolicy, "shop", "local"}, {policywatch.GVRClusterwide, "", "deny"}} {
		if err := dc.Resource(d.gvr).Namespace(d.ns).Delete(ctx, d.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	expect("deletes", false, nil, false)
	if r := w.Refusals(); len(r) != 0 {
		t.Errorf("refusals after deletes: %v", r)
	}
	if w.Policies() != 0 || w.Failures() != 0 {
		t.Errorf("policies %d, failures %d", w.Policies(), w.Failures())
	}
}
