// Package localcluster watches the agent's own cluster through its
// kube-apiserver (client-go informers) and feeds the service merger and the
// datapath reconciler:
//
//   - Services and EndpointSlices → servicemerge (every Service with a
//     ClusterIP is programmed; the mesh annotations decide whether remote
//     backends join);
//   - other Nodes' spec.podCIDRs → tunnel entries to the node's InternalIP,
//     with the own cluster ID (full mode);
//   - every Node's InternalIP and ExternalIP addresses → ipcache entries
//     with Cilium's reserved identities, host (1) for this node and
//     remote-node (6) for the others, own cluster ID, no tunnel endpoint
//     (nodeaddrs.go);
//   - Pods scheduled on this node (spec.nodeName) → datapath.Endpoint for each
//     pod IP, delivered to the interface of the host route to that IP
//     (RTM_GETROUTE; the CNI, or the e2e harness, installs
//     `ip route add <podIP>/32 dev <host-veth>`), plus an ipcache entry with
//     a zero tunnel endpoint (local delivery). A pod whose route is not
//     there yet is retried with backoff.
//   - the own cluster's pods on other nodes (Config.OwnPods, read by
//     package localidentity from the clustermesh-apiserver's etcd) → ipcache
//     entries with their identity and the own cluster ID; in full mode with
//     their node as tunnel endpoint, beside a primary CNI with none (the
//     entry names the identity, the host keeps routing). The watcher is the
//     one owner of the own cluster's ipcache entries: an address of one of
//     this node's pods (or whose kvstore entry names this node) is left to
//     the pod's reconcile.
//
// Identities of the own cluster's pods are allocated by the
// clustermesh-apiserver (Config.Identity, 0 while unknown). Other nodes'
// pods are reached through the tunnel entries of their pod CIDRs (full
// mode) or the primary CNI. Remote clusters' ipcache entries come from
// their kvstores (package remotecluster).
//
// Informer handlers only enqueue keys; workers reconcile from the listers. Run
// first reconciles everything listed after the caches sync, flushes the
// merger and calls Config.OnSynced; Config.OnIPCacheSynced follows once
// OwnPods is synced too, so the datapath reconciler can delete restored
// entries the own cluster no longer wants.
package localcluster
