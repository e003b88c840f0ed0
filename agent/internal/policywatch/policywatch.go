package policywatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/cidridentity"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Sink programs diffs (policysync.Syncer).
type Sink interface {
	Apply(policy.Diff) error
	SetAnyPolicy(bool) error
}

// IPCache programs the ipcache entries of CIDR identities
// (dpsync.Reconciler).
type IPCache interface {
	UpsertCIDR(p netip.Prefix, identity uint32)
	DeleteCIDR(p netip.Prefix)
}

// EventFunc records a warning Event on a refused policy object.
type EventFunc func(obj *unstructured.Unstructured, reason, message string)

// The watched kinds.
var (
	GVRNetworkPolicy = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
	GVRCiliumPolicy  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	GVRClusterwide   = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	gvrs             = []schema.GroupVersionResource{GVRNetworkPolicy, GVRCiliumPolicy, GVRClusterwide}
	keyPrefixes      = []string{"knp/", "cnp/", "ccnp/"}
)

// Config configures a Watcher.
type Config struct {
	Options rules.Options
	// Event, if set, records refusals on the objects.
	Event EventFunc
	// RetryMin and RetryMax bound the backoff of failed keys.
	RetryMin, RetryMax time.Duration
	// IPCache, if set, programs the prefixes of CIDR identities.
	IPCache IPCache
	// RestoredCIDRs are the CIDR identities an earlier agent programmed
	// (prefix → identity, from the restored ipcache): a prefix gets its
	// number again, so the restored entries stay right meanwhile.
	RestoredCIDRs map[netip.Prefix]uint32
	// MaxCIDRIdentities bounds the CIDR identities held at once
	// (cidridentity.DefaultMax if 0); a policy that would exceed it is
	// refused.
	MaxCIDRIdentities int
}

// Refusal is a policy the agent refused, and why.
type Refusal struct {
	Policy string
	Reason string
}

type objKey struct {
	kind      int // index in gvrs
	namespace string
	name      string
}

func (k objKey) policyKey() string {
	if k.namespace == "" {
		return keyPrefixes[k.kind] + k.name
	}
	return keyPrefixes[k.kind] + k.namespace + "/" + k.name
}

// Watcher watches policy objects. Run it once.
type Watcher struct {
	cfg    Config
	dyn    dynamic.Interface
	engine *policy.Engine
	sink   Sink
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[objKey]

	// mu orders every engine change with the application of its diff.
	mu       sync.Mutex
	listers  []cache.GenericLister
	accepted map[string]bool           // guarded by mu: policies in the engine
	prefixes map[string][]netip.Prefix // guarded by mu: CIDR prefixes of accepted policies
	cidrs    *cidridentity.Allocator   // the CIDR identities of accepted policies (safe for concurrent use)
	refused  map[string]Refusal        // guarded by mu
	failures int                       // guarded by mu: diffs the sink failed to apply
	synced   atomic.Bool               // the informers' initial lists are in
}

// New returns a Watcher over engine. The reserved identities are added at
// once.
func New(cfg Config, dyn dynamic.Interface, engine *policy.Engine, sink Sink, log *slog.Logger) *Watcher {
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 50 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 30 * time.Second
	}
	w := &Watcher{cfg: cfg, dyn: dyn, engine: engine, sink: sink, log: log,
		accepted: map[string]bool{}, refused: map[string]Refusal{},
		prefixes: map[string][]netip.Prefix{}, cidrs: cidridentity.New(cfg.MaxCIDRIdentities),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[objKey](cfg.RetryMin, cfg.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[objKey]{}),
	}
	restored := make(map[netip.Prefix]selector.ID, len(cfg.RestoredCIDRs))
	for p, id := range cfg.RestoredCIDRs {
		restored[p] = selector.ID(id)
	}
	w.cidrs.Restore(restored)
	for _, id := range slices.Sorted(maps.Keys(selector.Reserved())) {
		w.apply(engine.UpsertIdentity(policy.Identity{ID: id, Labels: selector.Reserved()[id]}))
	}
	return w
}

// apply hands a diff to the sink; the caller holds mu or is New.
func (w *Watcher) apply(d policy.Diff) {
	if len(d) == 0 {
		return
	}
	if err := w.sink.Apply(d); err != nil {
		w.failures++
		w.log.Error("programming policy failed", "error", err)
	}
}

// UpsertIdentity adds or replaces an identity (own or remote cluster).
func (w *Watcher) UpsertIdentity(id uint32, labels wire.Labels) {
	w.UpsertIdentityLabels(id, IdentityLabels(labels))
}

// UpsertIdentityLabels is UpsertIdentity with the labels already in the
// engine's form: the engine keeps ls itself, so a caller that holds the
// identity (the remote's store) shares them instead of holding a second
// copy.
func (w *Watcher) UpsertIdentityLabels(id uint32, ls selector.Labels) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.apply(w.engine.UpsertIdentity(policy.Identity{ID: selector.ID(id), Labels: ls}))
}

// IdentityLabels converts an identity's labels to the engine's form (the
// strings are shared, not copied).
func IdentityLabels(labels wire.Labels) selector.Labels {
	ls := make([]selector.Label, len(labels))
	for i, l := range labels {
		ls[i] = selector.Label{Source: l.Source, Key: l.Key, Value: l.Value}
	}
	return selector.NewLabels(ls...)
}

// UpdateEndpointPorts takes the change of one pod ipcache entry (own or
// remote cluster) from identity oldID with named ports old to curID with
// cur; an ID of 0 is no entry. The engine resolves a port name of an
// identity from what all its endpoints declare.
func (w *Watcher) UpdateEndpointPorts(oldID uint32, old []wire.NamedPort, curID uint32, cur []wire.NamedPort) {
	o, c := endpointPorts(oldID, old), endpointPorts(curID, cur)
	if o.ID == c.ID && slices.Equal(o.Ports, c.Ports) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.apply(w.engine.UpdateEndpointPorts(o, c))
}

func endpointPorts(id uint32, ports []wire.NamedPort) policy.EndpointPorts {
	ep := policy.EndpointPorts{ID: selector.ID(id)}
	if id == 0 {
		return ep
	}
	for _, p := range ports {
		// The decoder accepted only TCP, UDP and SCTP.
		proto, err := ipproto.Parse(string(p.Protocol))
		if err != nil {
			continue
		}
		ep.Ports = append(ep.Ports, policy.NamedPort{Name: p.Name, Port: p.Port, Proto: proto})
	}
	return ep
}

// DeleteIdentity removes an identity.
func (w *Watcher) DeleteIdentity(id uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.apply(w.engine.DeleteIdentity(selector.ID(id)))
}

// Refusals returns the refused policies, sorted.
func (w *Watcher) Refusals() []Refusal {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := slices.Collect(maps.Values(w.refused))
	slices.SortFunc(out, func(a, b Refusal) int { return strings.Compare(a.Policy, b.Policy) })
	return out
}

// Policies returns the number of accepted policies.
func (w *Watcher) Policies() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.accepted)
}

// Failures returns the number of diffs the datapath failed to apply.
func (w *Watcher) Failures() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failures
}

// Synced reports whether every policy object listed at start has been
// handled.
func (w *Watcher) Synced() bool { return w.synced.Load() && w.queue.Len() == 0 }

// Run watches until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.queue.ShutDown()
	factory := dynamicinformer.NewDynamicSharedInformerFactory(w.dyn, 0)
	var synced []cache.InformerSynced
	listers := make([]cache.GenericLister, len(gvrs))
	for i, gvr := range gvrs {
		inf := factory.ForResource(gvr)
		listers[i] = inf.Lister()
		if _, err := inf.Informer().AddEventHandler(w.handler(i)); err != nil {
			return fmt.Errorf("watch %s: %w", gvr.Resource, err)
		}
		synced = append(synced, inf.Informer().HasSynced)
	}
	w.mu.Lock()
	w.listers = listers
	w.mu.Unlock()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	w.synced.Store(true)
	var wg sync.WaitGroup
	wg.Go(func() {
		for w.processNext() {
		}
	})
	<-ctx.Done()
	w.queue.ShutDown()
	wg.Wait()
	return nil
}

func (w *Watcher) handler(kind int) cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, err := metaAccessor(obj)
		if err != nil {
			w.log.Warn("unexpected object in policy informer", "error", err)
			return
		}
		w.queue.Add(objKey{kind: kind, namespace: m.GetNamespace(), name: m.GetName()})
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue}
}

func metaAccessor(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

func (w *Watcher) processNext() bool {
	k, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(k)
	if err := w.reconcile(k); err != nil {
		w.log.Warn("reconcile policy", "policy", k.policyKey(), "error", err)
		w.queue.AddRateLimited(k)
		return true
	}
	w.queue.Forget(k)
	return true
}

// reconcile brings one object's policy into the engine. A refused policy
// is reported and changes nothing: a new one is not added, and a refused
// update keeps the version accepted before it.
func (w *Watcher) reconcile(k objKey) error {
	w.mu.Lock()
	lister := w.listers[k.kind]
	w.mu.Unlock()
	var obj any
	var err error
	if k.namespace == "" {
		obj, err = lister.Get(k.name)
	} else {
		obj, err = lister.ByNamespace(k.namespace).Get(k.name)
	}
	key := k.policyKey()
	if apierrors.IsNotFound(err) {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.refused, key)
		if w.accepted[key] {
			delete(w.accepted, key)
			w.apply(w.engine.DeletePolicy(key))
			w.releaseCIDRs(w.prefixes[key])
			delete(w.prefixes, key)
			w.setAny()
		}
		return nil
	}
	if err != nil {
		return err
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("policy %q: unexpected %T", key, obj)
	}
	pol, err := rules.DecodeUnstructured(u.Object, w.cfg.Options)
	var refusal *rules.RefusedError
	if errors.As(err, &refusal) {
		w.refuse(u, key, refusal.Error())
		return nil
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	prefixes := pol.Prefixes()
	if err := w.acquireCIDRs(prefixes); err != nil {
		// Refused while the node holds too many CIDR identities; retried
		// with backoff, as other policies may free some.
		w.mu.Unlock()
		w.refuse(u, key, (&rules.RefusedError{Policy: key, Reason: err.Error(), Err: rules.ErrUnsupported}).Error())
		return fmt.Errorf("policy %q: %w", key, err)
	}
	delete(w.refused, key)
	w.accepted[key] = true
	w.apply(w.engine.UpsertPolicy(pol))
	w.releaseCIDRs(w.prefixes[key])
	w.prefixes[key] = prefixes
	w.setAny()
	w.mu.Unlock()
	return nil
}

// refuse records a refused policy (an Event the first time).
func (w *Watcher) refuse(u *unstructured.Unstructured, key, msg string) {
	w.mu.Lock()
	_, known := w.refused[key]
	w.refused[key] = Refusal{Policy: key, Reason: msg}
	w.mu.Unlock()
	if !known {
		w.log.Warn("policy refused", "policy", key, "reason", msg)
		if w.cfg.Event != nil {
			w.cfg.Event(u, "PolicyRefused", msg)
		}
	}
}

// acquireCIDRs takes references on the CIDR identities of prefixes; new
// identities enter the engine (and the policy maps, for rules that already
// select them, such as world) before their prefix enters the ipcache. The
// caller holds mu.
func (w *Watcher) acquireCIDRs(prefixes []netip.Prefix) error {
	created, err := w.cidrs.Acquire(prefixes)
	if err != nil {
		return err
	}
	for _, c := range created {
		w.apply(w.engine.UpsertIdentity(policy.Identity{ID: c.ID, Labels: c.Labels}))
		if w.cfg.IPCache != nil {
			w.cfg.IPCache.UpsertCIDR(c.Prefix, uint32(c.ID))
		}
	}
	return nil
}

// releaseCIDRs drops references on the CIDR identities of prefixes; a freed
// identity leaves the ipcache, then the engine. The caller holds mu.
func (w *Watcher) releaseCIDRs(prefixes []netip.Prefix) {
	for _, c := range w.cidrs.Release(prefixes) {
		if w.cfg.IPCache != nil {
			w.cfg.IPCache.DeleteCIDR(c.Prefix)
		}
		w.apply(w.engine.DeleteIdentity(c.ID))
	}
}

// CIDRIdentities returns the CIDR identities held and their bound.
func (w *Watcher) CIDRIdentities() (held, max int) { return w.cidrs.Len(), w.cidrs.Max() }

// CIDRPrefix returns the prefix of CIDR identity id.
func (w *Watcher) CIDRPrefix(id policy.ID) (netip.Prefix, bool) {
	return w.cidrs.Prefix(id)
}

// setAny tells the sink whether any policy is loaded; the caller holds mu.
func (w *Watcher) setAny() {
	if err := w.sink.SetAnyPolicy(len(w.accepted) > 0); err != nil {
		w.failures++
		w.log.Error("programming the unknown identity's mode failed", "error", err)
	}
}
