package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/internal/runner"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// policyPlane is the agent's network policy: the engine, the watcher of the
// policy objects, the datapath syncer and the trusted nodes.
type policyPlane struct {
	engine *policy.Engine
	sync   *policysync.Syncer
	trust  *policysync.NodeTrust
	watch  *policywatch.Watcher
	pw     *bpf.PolicyWriter // nil with the memory datapath
	dp     *bpf.Datapath     // nil with the memory datapath
	ipc    cidrIPCache
	log    *slog.Logger
	// podIPs and identityOf name this node's pods (set once both are known;
	// nil without --kvstore-config).
	podIPs     func(namespace, name string) []netip.Addr
	identityOf func(netip.Addr) uint32
	// policiesSynced tells the restore hold that the policies are synced
	// (set before the parts run).
	policiesSynced func()
}

// cidrIPCache is what the policy plane needs of the ipcache
// (dpsync.Reconciler): the entries of CIDR identities, and the programmed
// entries for trace.
type cidrIPCache interface {
	policywatch.IPCache
	IPCache() []datapath.IPCacheEntry
}

// discardPolicy is the policy writer of the memory datapath: the resolved
// state lives in the engine only.
type discardPolicy struct{}

func (discardPolicy) Apply(datapath.PolicyBatch) error { return nil }

func newPolicyPlane(cfg Config, dp *bpf.Datapath, ipc cidrIPCache, restored map[netip.Prefix]uint32, kube kubernetes.Interface, dyn dynamic.Interface, reg prometheus.Registerer, log *slog.Logger) (*policyPlane, error) {
	p := &policyPlane{engine: policy.New(policy.Config{ClusterName: cfg.ClusterName}), dp: dp, ipc: ipc, log: log}
	var w policysync.Writer = discardPolicy{}
	sc := policysync.Config{Resolved: p.engine, Log: log}
	if dp != nil {
		pw, err := bpf.NewPolicyWriter(dp, log)
		if err != nil {
			return nil, err
		}
		p.pw, w = pw, pw
		sc.Capacity = pw.Capacity()
	}
	p.sync = policysync.New(sc, w, reg)
	p.trust = policysync.NewNodeTrust(w, cfg.MaxConnectedClusters)
	opts := cfg.Policy
	opts.ClusterName = cfg.ClusterName
	var sink policywatch.Sink = p.sync
	if cfg.KVStoreConfig == "" {
		// Without the own cluster's identities no local pod is a policy
		// subject: say so, and do not put every pod (identity 0) in
		// default deny.
		log.Warn("--kvstore-config is not set: this node's pods have no identity and no policy applies to them")
		sink = unknownAllowed{p.sync}
	}
	p.watch = policywatch.New(policywatch.Config{Options: opts, Event: refusalEvent(kube, cfg.NodeName, log), IPCache: ipc, RestoredCIDRs: restored}, dyn, p.engine, sink, log)
	return p, nil
}

// restoredCIDRs returns the CIDR identities an earlier agent programmed
// (restored ipcache entries with a node-local identity).
func restoredCIDRs(st datapath.State) map[netip.Prefix]uint32 {
	out := map[netip.Prefix]uint32{}
	for p, e := range st.IPCache {
		if selector.IsLocalScope(selector.ID(e.Identity)) {
			out[p] = e.Identity
		}
	}
	return out
}

// unknownAllowed leaves pods of unknown identity in default allow.
type unknownAllowed struct{ *policysync.Syncer }

func (unknownAllowed) SetAnyPolicy(bool) error { return nil }

// parts returns the long-running parts: the policy watcher, the drop event
// reader, and the sweep of what an earlier agent left in the policy maps
// once policies and remotes are synced (ready).
func (p *policyPlane) parts(ready func() bool) []runner.Part {
	parts := []runner.Part{{Name: "policywatch", Run: p.watch.Run}}
	if p.dp == nil {
		parts = append(parts, runner.Part{Name: "policy sweep", Run: func(ctx context.Context) error { return p.sweep(ctx, ready) }})
	} else {
		parts = append(parts,
			runner.Part{Name: "policy drops", Run: func(ctx context.Context) error { return p.dp.ReadDrops(ctx, p.sync.HandleDrop) }},
			runner.Part{Name: "policy sweep", Run: func(ctx context.Context) error { return p.sweep(ctx, ready) }})
	}
	return parts
}

// sweepDeadline bounds how long stale policy entries of an earlier agent
// are kept while a source is not synced.
const sweepDeadline = 5 * time.Minute

func (p *policyPlane) sweep(ctx context.Context, ready func() bool) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.Now().Add(sweepDeadline)
	for !(p.watch.Synced() && ready()) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	// The CIDR entries an earlier agent programmed that no policy names
	// now go (the restore hold decides).
	if p.policiesSynced != nil {
		p.policiesSynced()
	}
	if p.pw == nil {
		<-ctx.Done()
		return nil
	}
	if err := p.pw.Sweep(); err != nil {
		p.log.Error("sweeping stale policy entries", "error", err)
	}
	<-ctx.Done()
	return nil
}

// refusalEvent records a refused policy as a Warning Event on the object.
func refusalEvent(kube kubernetes.Interface, node string, log *slog.Logger) policywatch.EventFunc {
	return func(u *unstructured.Unstructured, reason, msg string) {
		ns := u.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		now := metav1.Now()
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{GenerateName: u.GetName() + "-", Namespace: ns},
			InvolvedObject: corev1.ObjectReference{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(),
				Namespace: u.GetNamespace(), Name: u.GetName(), UID: u.GetUID(), ResourceVersion: u.GetResourceVersion()},
			Reason: reason, Message: msg, Type: corev1.EventTypeWarning,
			Source:         corev1.EventSource{Component: "clustermesh-agent", Host: node},
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := kube.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			log.Warn("cannot record the refusal event", "policy", u.GetName(), "error", err)
		}
	}
}

// trustFlush is the reconciler's upstream: the service merger, and then the
// node trust, written in one batch of the nodes whose trust changed. The
// reconciler counts the nodes its remote claims name into the node trust
// itself (dpsync.Reconciler.CountNodes), as each claim changes, so a node
// is trusted by the flush that programs the first entry naming it, or the
// next one.
type trustFlush struct {
	dpsync.Upstream
	trust *policysync.NodeTrust
	log   *slog.Logger
}

// Flush implements dpsync.Upstream.
func (f trustFlush) Flush() {
	f.Upstream.Flush()
	if err := f.trust.Flush(); err != nil {
		f.log.Error("writing trusted nodes", "error", err)
	}
}

// identity takes an own-cluster identity (labels nil: deleted).
func (p *policyPlane) identity(id uint32, labels wire.Labels) {
	if labels == nil {
		p.watch.DeleteIdentity(id)
		return
	}
	p.watch.UpsertIdentity(id, labels)
}

// ErrNoEndpoint is returned for an endpoint name that names nothing.
var ErrNoEndpoint = errors.New("no such endpoint")

// Resolve implements statusapi.Policy: "namespace/pod" of this node, an
// identity number, or labels "k=v,k2=v2" (every identity they select);
// "" is every local endpoint.
func (p *policyPlane) Resolve(ep string) ([]policy.ID, error) {
	if ep == "" {
		return slices.Sorted(maps.Keys(p.engine.Snapshot())), nil
	}
	if n, err := strconv.ParseUint(ep, 10, 32); err == nil {
		return []policy.ID{policy.ID(n)}, nil
	}
	if a, err := netip.ParseAddr(ep); err == nil {
		return []policy.ID{p.addressIdentity(a)}, nil
	}
	if ns, name, ok := strings.Cut(ep, "/"); ok && !strings.Contains(ep, "=") {
		if p.podIPs == nil || p.identityOf == nil {
			return nil, fmt.Errorf("pod %q: %w (no pod identities: --kvstore-config)", ep, ErrNoEndpoint)
		}
		var ids []policy.ID
		for _, ip := range p.podIPs(ns, name) {
			if id := p.identityOf(ip); id != 0 && !slices.Contains(ids, policy.ID(id)) {
				ids = append(ids, policy.ID(id))
			}
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("pod %q of this node: %w or identity unknown", ep, ErrNoEndpoint)
		}
		return ids, nil
	}
	match := map[string]string{}
	for _, kv := range strings.Split(ep, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("endpoint %q: want namespace/pod, an identity or labels k=v,...: %w", ep, ErrNoEndpoint)
		}
		match[k] = v
	}
	sel, err := selector.New(match, nil)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	ids := p.engine.Selected(sel)
	if len(ids) == 0 {
		return nil, fmt.Errorf("labels %q select %w", ep, ErrNoEndpoint)
	}
	return ids, nil
}

// addressIdentity is the identity the datapath gives address a: that of
// the longest programmed ipcache prefix containing it (a pod, a CIDR
// identity), else world.
func (p *policyPlane) addressIdentity(a netip.Addr) policy.ID {
	a = a.Unmap()
	best, id := -1, uint32(selector.IDWorld)
	for _, e := range p.ipc.IPCache() {
		if e.Prefix.Bits() > best && e.Prefix.Contains(a) {
			best, id = e.Prefix.Bits(), e.Identity
		}
	}
	if (best < 0 || id == 0) && p.identityOf != nil {
		// A pod of this node whose entry does not carry its identity yet.
		if own := p.identityOf(a); own != 0 {
			return policy.ID(own)
		}
	}
	if best >= 0 && id == 0 {
		return 0 // a pod whose identity is unknown
	}
	return policy.ID(id)
}

// Endpoint implements statusapi.Policy.
func (p *policyPlane) Endpoint(id policy.ID) (policy.EndpointPolicy, bool) {
	return p.engine.Endpoint(id)
}

// Labels implements statusapi.Policy. A CIDR identity is shown by its own
// prefix's label (its labels also name every wider prefix).
func (p *policyPlane) Labels(id policy.ID) string {
	if pfx, ok := p.watch.CIDRPrefix(id); ok {
		return selector.SourceCIDR + ":" + pfx.String()
	}
	i, ok := p.engine.Identity(id)
	if !ok {
		return ""
	}
	return i.Labels.String()
}

// Trace implements statusapi.Policy.
func (p *policyPlane) Trace(f policy.Flow) policy.TraceResult { return p.engine.Trace(f) }

// Refusals implements statusapi.Policy.
func (p *policyPlane) Refusals() []policywatch.Refusal { return p.watch.Refusals() }

// Policies implements statusapi.Policy.
func (p *policyPlane) Policies() int { return p.watch.Policies() }

// Failures implements statusapi.Policy.
func (p *policyPlane) Failures() int { return p.watch.Failures() }

// CIDRIdentities implements statusapi.Policy.
func (p *policyPlane) CIDRIdentities() (held, max int) { return p.watch.CIDRIdentities() }

// Drops implements statusapi.Policy.
func (p *policyPlane) Drops() map[policysync.DropKey]uint64 { return p.sync.Drops() }

// NamedPortConflicts implements statusapi.Policy.
func (p *policyPlane) NamedPortConflicts() map[policy.ID][]string {
	return p.engine.NamedPortConflicts()
}

// MapUse implements statusapi.Policy.
func (p *policyPlane) MapUse() policysync.MapUse { return p.sync.MapUse() }

// refusedReport returns the refused policies for the status report, and
// the local identities whose policy does not fit the policy map.
func (p *policyPlane) refusedReport() []meshstatus.PolicyRefusal {
	var out []meshstatus.PolicyRefusal
	for _, r := range p.watch.Refusals() {
		out = append(out, meshstatus.PolicyRefusal{Policy: r.Policy, Reason: r.Reason})
	}
	u := p.sync.MapUse()
	for _, r := range u.Refused {
		out = append(out, meshstatus.PolicyRefusal{Policy: fmt.Sprintf("identity %d (%s)", r.Subject, p.Labels(policy.ID(r.Subject))),
			Reason: fmt.Sprintf("its policy needs %d policy map keys, %d of %d are in use (--bpf-policy-entries): its pods are in default deny", r.Keys, u.Used, u.Capacity)})
	}
	return out
}
