package nodes

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/controller"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Source is the wire.Node Source of nodes read from Kubernetes Node
// objects: Cilium's source.Kubernetes ("k8s"), one of the values Cilium
// knows. (Cilium's own apiserver publishes nodes made from CiliumNode
// objects as "custom-resource"; a Cilium reader replaces the Source of
// every remote node with "clustermesh" either way.) No health or
// CiliumInternalIP addresses are published: the agent runs no health
// endpoint and has no router address (cilium_host); a Cilium reader then
// adds no ipcache entries for them, which is what it does for nodes
// without them.
const Source = wire.NodeSourceKubernetes

// Value maps a Kubernetes Node to its wire.Node.
func Value(n *corev1.Node, cluster string, clusterID uint32) wire.Node {
	out := wire.Node{Name: n.Name, Cluster: cluster, ClusterID: clusterID, Source: Source}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" {
			continue
		}
		out.IPAddresses = append(out.IPAddresses, wire.NodeAddress{Type: wire.NodeAddressType(a.Type), IP: ip.Unmap()})
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		p = p.Masked()
		c := wire.CIDR{Prefix: p}
		switch {
		case p.Addr().Is4() && !out.IPv4AllocCIDR.IsValid():
			out.IPv4AllocCIDR = c
		case p.Addr().Is4():
			out.IPv4SecondaryAllocCIDRs = append(out.IPv4SecondaryAllocCIDRs, c)
		case !out.IPv6AllocCIDR.IsValid():
			out.IPv6AllocCIDR = c
		default:
			out.IPv6SecondaryAllocCIDRs = append(out.IPv6SecondaryAllocCIDRs, c)
		}
	}
	if len(n.Labels) > 0 {
		out.Labels = n.Labels
	}
	return out
}

// Store is the write side of the nodes prefix.
type Store = controller.Writer

// Config configures the node publisher.
type Config struct {
	Cluster   string
	ClusterID uint32
	Workers   int
}

// Publisher writes the cluster's nodes.
type Publisher struct {
	cfg     Config
	lister  corelisters.NodeLister
	log     *slog.Logger
	ctrl    *controller.Controller
	entries *controller.Entries
}

// New returns a publisher fed by a node informer; onSynced runs once the
// initial listing has been handed to store.
func New(cfg Config, inf cache.SharedIndexInformer, store Store, onSynced func(),
	log *slog.Logger, cm *controller.Metrics, reg prometheus.Registerer) (*Publisher, error) {
	p := &Publisher{
		cfg: cfg, lister: corelisters.NewNodeLister(inf.GetIndexer()),
		log: log.With("publisher", "nodes"),
	}
	var err error
	if p.entries, err = controller.NewEntries(string(wire.KindNodes), store, reg); err != nil {
		return nil, err
	}
	p.ctrl = controller.New(controller.Config{Name: "nodes", Workers: cfg.Workers}, p,
		[]cache.InformerSynced{inf.HasSynced}, inf.GetIndexer().ListKeys, onSynced, log, cm)
	if _, err := inf.AddEventHandler(p.ctrl.Handler()); err != nil {
		return nil, fmt.Errorf("node handler: %w", err)
	}
	return p, nil
}

// Run reconciles nodes until ctx is done.
func (p *Publisher) Run(ctx context.Context) error { return p.ctrl.Run(ctx) }

// Synced is closed once the initial listing has been reconciled.
func (p *Publisher) Synced() <-chan struct{} { return p.ctrl.Synced() }

// Reconcile writes or deletes the entry of one node.
func (p *Publisher) Reconcile(_ context.Context, name string) error {
	n, err := p.lister.Get(name)
	key := wire.NodeKey(p.cfg.Cluster, name)
	switch {
	case apierrors.IsNotFound(err):
		p.withdraw(name, key)
		return nil
	case err != nil:
		return err
	}
	v, err := wire.MarshalNode(Value(n, p.cfg.Cluster, p.cfg.ClusterID))
	if err != nil {
		p.withdraw(name, key)
		return fmt.Errorf("node %s: %w: %w", name, controller.ErrTerminal, err)
	}
	p.entries.Upsert(name, key, v)
	return nil
}

func (p *Publisher) withdraw(name, key string) { p.entries.Withdraw(name, key) }
