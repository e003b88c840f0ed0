package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/clustermesh/clustermesh/agent/internal/localidentity"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/annotation"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// ServiceSink is what the watcher needs of the merger.
type ServiceSink interface {
	SetLocalService(servicemerge.Name, servicemerge.LocalService)
	DeleteLocalService(servicemerge.Name)
	SetEndpointSlice(servicemerge.Name, string, servicemerge.EndpointSlice)
	DeleteEndpointSlice(servicemerge.Name, string)
	Flush()
}

// DatapathSink is what the watcher needs of the datapath reconciler.
type DatapathSink interface {
	UpsertTunnel(datapath.TunnelEntry)
	DeleteTunnel(netip.Prefix, uint32)
	UpsertEndpoint(datapath.Endpoint)
	DeleteEndpoint(netip.Addr)
	UpsertIPCache(datapath.IPCacheEntry)
	DeleteIPCache(netip.Prefix, uint32)
	// SetLocalNode records a node's pod CIDRs and addresses (nil: gone):
	// the local cluster wins over remotes for them.
	SetLocalNode(name string, prefixes []netip.Prefix)
}

// OwnPods is what the watcher needs of the own cluster's pod identities.
type OwnPods interface {
	Pod(netip.Addr) (localidentity.Pod, bool)
	Addrs() []netip.Addr
}

// ErrNoRoute is returned by an IfIndexFunc when no host route to the IP exists.
var ErrNoRoute = errors.New("no host route")

// IfIndexFunc returns the interface index of the host route to a pod IP.
type IfIndexFunc func(netip.Addr) (int, error)

// Config configures a Watcher.
type Config struct {
	NodeName  string
	ClusterID uint32
	// NodeTunnels routes the other nodes' pod CIDRs through the tunnel
	// (full mode); beside a primary CNI it connects the nodes instead.
	NodeTunnels bool
	Workers     int
	// IfIndex looks up the host route of a pod IP; default RouteIfIndex.
	IfIndex IfIndexFunc
	// Identity returns the security identity the cluster's
	// clustermesh-apiserver allocated for a pod IP, 0 while unknown (see
	// docs/policy.md); nil: always 0. Call Reidentify when it changes.
	Identity func(netip.Addr) uint32
	// OwnPods holds every pod address of the own cluster with its
	// identity and node (localidentity.Watcher); nil: only this node's
	// pods get ipcache entries. Call Reidentify when an entry changes.
	OwnPods OwnPods
	// OnSynced is called once the initial state has been handed in.
	OnSynced func()
	// OnIPCacheSynced is called once the own cluster's ipcache entries
	// have been handed in: after OnSynced and, with OwnPods, after
	// OwnPodsSynced (the restore hold of the own cluster ID ends then).
	OnIPCacheSynced func()
	// RetryMin and RetryMax bound the backoff of failed keys.
	RetryMin, RetryMax time.Duration
}

type kind uint8

const (
	kindService kind = iota
	kindSlice
	kindNode
	kindPod
	// kindIP is a pod address of the own cluster (name: the address)
	// whose ipcache entry is reconciled from OwnPods unless a pod of this
	// node holds it.
	kindIP
)

type key struct {
	kind            kind
	namespace, name string
}

// Watcher watches the own cluster. Run it once.
type Watcher struct {
	cfg    Config
	client kubernetes.Interface
	svcs   ServiceSink
	dp     DatapathSink
	log    *slog.Logger
	warns  prometheus.Counter

	queue workqueue.TypedRateLimitingInterface[key]

	svcLister   corelisters.ServiceLister
	sliceLister discoverylisters.EndpointSliceLister
	nodeLister  corelisters.NodeLister
	podLister   corelisters.PodLister

	mu        sync.Mutex
	slices    map[key]servicemerge.Name // guarded by mu: slice → its service, for deletes
	nodeCIDRs map[string][]netip.Prefix // guarded by mu: node → programmed CIDRs
	nodes     map[string]struct{}       // guarded by mu: the cluster's nodes, reconciled
	podCIDRs  map[string][]netip.Prefix // guarded by mu: every node's pod CIDRs (this one's too)
	podIPs    map[key][]netip.Addr      // guarded by mu: pod → programmed endpoints
	nodeAddrs map[string][]netip.Addr   // guarded by mu: node → its InternalIP/ExternalIP (nodeaddrs.go)
	// informersSynced and ownPodsSynced: the two sources of the own
	// ipcache entries have delivered their full state. Guarded by mu.
	informersSynced, ownPodsSynced bool
	ipcacheSynced                  sync.Once
}

// New returns a Watcher. reg may be nil.
func New(cfg Config, client kubernetes.Interface, svcs ServiceSink, dp DatapathSink, log *slog.Logger, reg prometheus.Registerer) *Watcher {
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.IfIndex == nil {
		cfg.IfIndex = RouteIfIndex
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 50 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 30 * time.Second
	}
	w := &Watcher{
		cfg: cfg, client: client, svcs: svcs, dp: dp, log: log,
		warns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_agent_service_annotation_warnings_total",
			Help: "Service annotations with invalid values, replaced by their defaults.",
		}),
		slices:    map[key]servicemerge.Name{},
		nodeCIDRs: map[string][]netip.Prefix{},
		nodes:     map[string]struct{}{},
		podCIDRs:  map[string][]netip.Prefix{},
		podIPs:    map[key][]netip.Addr{},
		nodeAddrs: map[string][]netip.Addr{},
	}
	w.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[key](w.cfg.RetryMin, w.cfg.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[key]{})
	if reg != nil {
		reg.MustRegister(w.warns)
	}
	return w
}

// Run watches until ctx is done; it returns after its goroutines exit.
func (w *Watcher) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(w.client, 0)
	podFactory := informers.NewSharedInformerFactoryWithOptions(w.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", w.cfg.NodeName).String()
		}))
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	nodeInf := factory.Core().V1().Nodes()
	podInf := podFactory.Core().V1().Pods()
	w.svcLister, w.sliceLister = svcInf.Lister(), sliceInf.Lister()
	w.nodeLister, w.podLister = nodeInf.Lister(), podInf.Lister()
	for k, inf := range map[kind]cache.SharedIndexInformer{
		kindService: svcInf.Informer(), kindSlice: sliceInf.Informer(),
		kindNode: nodeInf.Informer(), kindPod: podInf.Informer(),
	} {
		if _, err := inf.AddEventHandler(w.handler(k)); err != nil {
			return fmt.Errorf("add handler: %w", err)
		}
	}
	factory.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	defer func() {
		w.queue.ShutDown()
		factory.Shutdown()
		podFactory.Shutdown()
	}()

	for _, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil // ctx done
		}
	}
	for _, ok := range podFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil
		}
	}
	w.initial()
	w.svcs.Flush()
	if w.cfg.OnSynced != nil {
		w.cfg.OnSynced()
	}
	w.mu.Lock()
	w.informersSynced = true
	w.mu.Unlock()
	w.maybeIPCacheSynced()
	w.log.Info("own cluster synced")

	var wg sync.WaitGroup
	for range w.cfg.Workers {
		wg.Go(func() {
			for w.processNext() {
			}
		})
	}
	<-ctx.Done()
	w.queue.ShutDown()
	wg.Wait()
	return nil
}

func (w *Watcher) handler(k kind) cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, err := metaOf(obj)
		if err != nil {
			return
		}
		w.queue.Add(key{k, m.GetNamespace(), m.GetName()})
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}
}

func metaOf(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T", obj)
	}
	return m, nil
}

// initial reconciles everything the listers hold; failures go to the queue.
func (w *Watcher) initial() {
	var keys []key
	if l, err := w.svcLister.List(labels.Everything()); err == nil {
		for _, o := range l {
			keys = append(keys, key{kindService, o.Namespace, o.Name})
		}
	}
	if l, err := w.sliceLister.List(labels.Everything()); err == nil {
		for _, o := range l {
			keys = append(keys, key{kindSlice, o.Namespace, o.Name})
		}
	}
	if l, err := w.nodeLister.List(labels.Everything()); err == nil {
		for _, o := range l {
			keys = append(keys, key{kindNode, "", o.Name})
		}
	}
	if l, err := w.podLister.List(labels.Everything()); err == nil {
		for _, o := range l {
			keys = append(keys, key{kindPod, o.Namespace, o.Name})
		}
	}
	if w.cfg.OwnPods != nil {
		for _, ip := range w.cfg.OwnPods.Addrs() {
			keys = append(keys, ipKey(ip))
		}
	}
	for _, k := range keys {
		if err := w.reconcile(k); err != nil {
			w.queue.AddRateLimited(k)
		}
	}
}

func (w *Watcher) processNext() bool {
	k, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(k)
	if err := w.reconcile(k); err != nil {
		w.log.Debug("reconcile failed, retrying", "kind", k.kind, "namespace", k.namespace, "name", k.name, "error", err)
		w.queue.AddRateLimited(k)
		return true
	}
	w.queue.Forget(k)
	return true
}

func (w *Watcher) reconcile(k key) error {
	switch k.kind {
	case kindService:
		return w.reconcileService(k)
	case kindSlice:
		return w.reconcileSlice(k)
	case kindNode:
		return w.reconcileNode(k)
	case kindPod:
		return w.reconcilePod(k)
	case kindIP:
		return w.reconcileIP(k)
	}
	return nil
}

func (w *Watcher) reconcileService(k key) error {
	n := servicemerge.Name{Namespace: k.namespace, Name: k.name}
	svc, err := w.svcLister.Services(k.namespace).Get(k.name)
	if apierrors.IsNotFound(err) {
		w.svcs.DeleteLocalService(n)
		return nil
	}
	if err != nil {
		return err
	}
	ls, ok := w.localService(svc)
	if !ok {
		w.svcs.DeleteLocalService(n)
		return nil
	}
	w.svcs.SetLocalService(n, ls)
	return nil
}

// localService converts a Service; false for Services without a ClusterIP.
func (w *Watcher) localService(svc *corev1.Service) (servicemerge.LocalService, bool) {
	ann, errs := annotation.Parse(svc.Annotations)
	for _, err := range errs {
		w.warns.Inc()
		w.log.Warn("invalid service annotation", "service", svc.Namespace+"/"+svc.Name, "error", err)
	}
	ls := servicemerge.LocalService{Annotations: ann, ProxyOnly: proxyOnly(svc)}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			ls.ClusterIPs = append(ls.ClusterIPs, ip)
		}
	}
	if len(ls.ClusterIPs) == 0 {
		return ls, false
	}
	for _, p := range svc.Spec.Ports {
		proto, err := datapath.ParseProto(string(p.Protocol))
		if err != nil || p.Port <= 0 || p.Port > 65535 {
			continue
		}
		ls.Ports = append(ls.Ports, servicemerge.ServicePort{Name: p.Name, Proto: proto, Port: uint16(p.Port)})
	}
	return ls, true
}

func (w *Watcher) reconcileSlice(k key) error {
	es, err := w.sliceLister.EndpointSlices(k.namespace).Get(k.name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	w.mu.Lock()
	prev, had := w.slices[k]
	w.mu.Unlock()
	var n servicemerge.Name
	if err == nil {
		n = servicemerge.Name{Namespace: k.namespace, Name: es.Labels[discoveryv1.LabelServiceName]}
	}
	if had && (err != nil || prev != n) {
		w.svcs.DeleteEndpointSlice(prev, k.name)
		w.mu.Lock()
		delete(w.slices, k)
		w.mu.Unlock()
	}
	if err != nil || n.Name == "" {
		return nil
	}
	w.svcs.SetEndpointSlice(n, k.name, convertSlice(es))
	w.mu.Lock()
	w.slices[k] = n
	w.mu.Unlock()
	return nil
}

func convertSlice(es *discoveryv1.EndpointSlice) servicemerge.EndpointSlice {
	var out servicemerge.EndpointSlice
	for _, p := range es.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		proto := ipproto.TCP
		if p.Protocol != nil {
			var err error
			if proto, err = datapath.ParseProto(string(*p.Protocol)); err != nil {
				continue
			}
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		out.Ports = append(out.Ports, servicemerge.ServicePort{Name: name, Proto: proto, Port: uint16(*p.Port)})
	}
	for _, e := range es.Endpoints {
		c := e.Conditions
		// Ready (nil means ready), or serving while terminating.
		usable := (c.Ready == nil || *c.Ready) ||
			(c.Serving != nil && *c.Serving && c.Terminating != nil && *c.Terminating)
		for _, a := range e.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				out.Endpoints = append(out.Endpoints, servicemerge.Endpoint{Addr: ip, Usable: usable})
			}
		}
	}
	return out
}

func (w *Watcher) reconcileNode(k key) error {
	var want []datapath.TunnelEntry
	node, err := w.nodeLister.Get(k.name)
	switch {
	case apierrors.IsNotFound(err):
		node = nil
	case err != nil:
		return err
	case node.Name != w.cfg.NodeName && w.cfg.NodeTunnels:
		want = tunnels(node, w.cfg.ClusterID)
	}
	w.dp.SetLocalNode(k.name, nodePrefixes(node))
	w.setNodeAddrs(k.name, nodeAddrs(node))
	w.mu.Lock()
	if node == nil {
		delete(w.nodes, k.name)
		delete(w.podCIDRs, k.name)
	} else {
		w.nodes[k.name] = struct{}{}
		w.podCIDRs[k.name] = nodePodCIDRs(node)
	}
	prev := w.nodeCIDRs[k.name]
	cidrs := make([]netip.Prefix, 0, len(want))
	for _, t := range want {
		cidrs = append(cidrs, t.CIDR)
	}
	if len(cidrs) == 0 {
		delete(w.nodeCIDRs, k.name)
	} else {
		w.nodeCIDRs[k.name] = cidrs
	}
	w.mu.Unlock()
	for _, p := range prev {
		if !containsPrefix(cidrs, p) {
			w.dp.DeleteTunnel(p, w.cfg.ClusterID)
		}
	}
	for _, t := range want {
		w.dp.UpsertTunnel(t)
	}
	return nil
}

// NodeCount returns the number of the cluster's nodes seen so far (0
// before the first sync).
func (w *Watcher) NodeCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.nodes)
}

// PodCIDRs returns the pod CIDRs of every node of the cluster seen so far.
func (w *Watcher) PodCIDRs() []netip.Prefix {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []netip.Prefix
	for _, l := range w.podCIDRs {
		out = append(out, l...)
	}
	return out
}

func nodePodCIDRs(node *corev1.Node) []netip.Prefix {
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

func containsPrefix(l []netip.Prefix, p netip.Prefix) bool {
	for _, q := range l {
		if q == p {
			return true
		}
	}
	return false
}

// nodePrefixes returns what a node of the own cluster holds: its pod CIDRs
// and its addresses as host prefixes (nil for no node).
func nodePrefixes(node *corev1.Node) []netip.Prefix {
	if node == nil {
		return nil
	}
	var out []netip.Prefix
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p.Masked())
		}
	}
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && (a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP) {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return out
}

// tunnels returns the tunnel entries of a node: its pod CIDRs via the
// InternalIP of the same family.
func tunnels(node *corev1.Node, clusterID uint32) []datapath.TunnelEntry {
	var v4, v6 netip.Addr
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		if ip.Is4() && !v4.IsValid() {
			v4 = ip
		} else if ip.Is6() && !v6.IsValid() {
			v6 = ip
		}
	}
	var out []datapath.TunnelEntry
	for _, p := range nodePodCIDRs(node) {
		nodeIP := v4
		if p.Addr().Is6() {
			nodeIP = v6
		}
		if !nodeIP.IsValid() {
			nodeIP = v4 // no InternalIP of that family: use the other one
			if !nodeIP.IsValid() {
				nodeIP = v6
			}
		}
		if nodeIP.IsValid() {
			out = append(out, datapath.TunnelEntry{CIDR: p, NodeIP: nodeIP, ClusterID: clusterID})
		}
	}
	return out
}

func (w *Watcher) reconcilePod(k key) error {
	var want []netip.Addr
	pod, err := w.podLister.Pods(k.namespace).Get(k.name)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case pod.Spec.NodeName == w.cfg.NodeName && !pod.Spec.HostNetwork &&
		pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed:
		for _, s := range pod.Status.PodIPs {
			if ip, err := netip.ParseAddr(s.IP); err == nil {
				want = append(want, ip)
			}
		}
		if len(want) == 0 && pod.Status.PodIP != "" {
			if ip, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
				want = append(want, ip)
			}
		}
	}
	var eps []datapath.Endpoint
	var missing error
	for _, ip := range want {
		idx, err := w.cfg.IfIndex(ip)
		if err != nil {
			missing = fmt.Errorf("pod %s/%s ip %s: %w", k.namespace, k.name, ip, err)
			continue
		}
		eps = append(eps, datapath.Endpoint{IP: ip, IfIndex: idx})
	}
	w.mu.Lock()
	prev := w.podIPs[k]
	if len(want) == 0 {
		delete(w.podIPs, k)
	} else {
		w.podIPs[k] = want
	}
	w.mu.Unlock()
	for _, ip := range prev {
		found := false
		for _, n := range want {
			found = found || n == ip
		}
		if !found {
			w.dp.DeleteEndpoint(ip)
			// The address may be another node's pod now: reconcileIP
			// deletes or rewrites its entry.
			w.queue.Add(ipKey(ip))
		}
	}
	for _, e := range eps {
		w.dp.UpsertEndpoint(e)
		// A local pod: zero tunnel endpoint; its identity as allocated by
		// the clustermesh-apiserver (0 while not known).
		var id uint32
		if w.cfg.Identity != nil {
			id = w.cfg.Identity(e.IP)
		}
		w.dp.UpsertIPCache(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(e.IP, e.IP.BitLen()), Identity: id, ClusterID: w.cfg.ClusterID})
	}
	return missing
}

func ipKey(ip netip.Addr) key { return key{kind: kindIP, name: ip.String()} }

// reconcileIP programs the ipcache entry of an own-cluster address that
// no pod of this node holds (reconcilePod owns those): a node's address
// (host or remote-node, nodeaddrs.go), else a pod's, its identity from
// OwnPods and its node as tunnel endpoint in full mode. Beside a primary
// CNI the entry gives the identity only (zero tunnel endpoint: cm_from_pod
// leaves the own cluster's routing to the host). w.mu is held across the
// writes so that reconcilePod, which records this node's addresses under
// it before writing, always writes last.
func (w *Watcher) reconcileIP(k key) error {
	ip, err := netip.ParseAddr(k.name)
	if err != nil {
		return nil // never queued
	}
	prefix := netip.PrefixFrom(ip, ip.BitLen())
	var pod localidentity.Pod
	ok := false
	if w.cfg.OwnPods != nil {
		pod, ok = w.cfg.OwnPods.Pod(ip)
	}
	if ok && w.onThisNode(pod) {
		ok = false // this node's pod: an entry only while reconcilePod programs it
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ips := range w.podIPs {
		if slices.Contains(ips, ip) {
			return nil
		}
	}
	if e, isNode := w.nodeEntryLocked(ip); isNode {
		w.dp.UpsertIPCache(e)
		return nil
	}
	if !ok {
		w.dp.DeleteIPCache(prefix, w.cfg.ClusterID)
		return nil
	}
	e := datapath.IPCacheEntry{Prefix: prefix, Identity: pod.Identity, ClusterID: w.cfg.ClusterID}
	if w.cfg.NodeTunnels {
		e.TunnelEndpoint = pod.Host
	}
	w.dp.UpsertIPCache(e)
	return nil
}

// OwnPodsSynced tells the watcher that OwnPods holds the own cluster's
// full state (localidentity.Config.OnSynced).
func (w *Watcher) OwnPodsSynced() {
	w.mu.Lock()
	w.ownPodsSynced = true
	w.mu.Unlock()
	w.maybeIPCacheSynced()
}

// maybeIPCacheSynced calls OnIPCacheSynced once both sources are synced,
// after reconciling every address OwnPods holds (those queued may not be
// yet), so that no entry of theirs is missing when the hold ends.
func (w *Watcher) maybeIPCacheSynced() {
	w.mu.Lock()
	ready := w.informersSynced && (w.cfg.OwnPods == nil || w.ownPodsSynced)
	w.mu.Unlock()
	if !ready {
		return
	}
	w.ipcacheSynced.Do(func() {
		if w.cfg.OwnPods != nil {
			for _, ip := range w.cfg.OwnPods.Addrs() {
				_ = w.reconcileIP(ipKey(ip)) // never fails
			}
		}
		if w.cfg.OnIPCacheSynced != nil {
			w.cfg.OnIPCacheSynced()
		}
	})
}

// onThisNode reports whether an own-cluster pod entry is of this node: its
// pod is scheduled here, or its node address is one of this node's (as
// while a deleted pod's entry is still in the kvstore).
func (w *Watcher) onThisNode(pod localidentity.Pod) bool {
	if pod.Name != "" {
		if p, err := w.podLister.Pods(pod.Namespace).Get(pod.Name); err == nil && p.Spec.NodeName == w.cfg.NodeName {
			return true
		}
	}
	node, err := w.nodeLister.Get(w.cfg.NodeName)
	return err == nil && pod.Host.IsValid() && slices.Contains(nodePrefixes(node), netip.PrefixFrom(pod.Host, pod.Host.BitLen()))
}

// PodIPs returns the addresses of a pod of this node (nil: none known).
func (w *Watcher) PodIPs(namespace, name string) []netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.podIPs[key{kind: kindPod, namespace: namespace, name: name}])
}

// Reidentify reconciles the pod of this node that has ip, if any, and the
// address's entry as another node's pod: its OwnPods entry changed. Safe
// to call before Run.
func (w *Watcher) Reidentify(ip netip.Addr) {
	w.mu.Lock()
	var ks []key
	for k, ips := range w.podIPs {
		if slices.Contains(ips, ip) {
			ks = append(ks, k)
		}
	}
	w.mu.Unlock()
	for _, k := range ks {
		w.queue.Add(k)
	}
	w.queue.Add(ipKey(ip))
}

// RouteIfIndex returns the output interface of the host route to ip.
func RouteIfIndex(ip netip.Addr) (int, error) {
	return routeIfIndex(ip)
}
