// Package localcluster watches the agent's own cluster through its
// kube-apiserver (client-go informers) and feeds the service merger and the
// datapath reconciler:
//
//   - Services and EndpointSlices → servicemerge (every Service with a
//     ClusterIP is programmed; the mesh annotations decide whether remote
//     backends join);
//   - other Nodes' spec.podCIDRs → tunnel entries to the node's InternalIP,
//     with the own cluster ID;
//   - Pods scheduled on this node (spec.nodeName) → datapath.Endpoint for each
//     pod IP, delivered to the interface of the host route to that IP
//     (RTM_GETROUTE; the CNI, or the e2e harness, installs
//     `ip route add <podIP>/32 dev <host-veth>`). A pod whose route is not
//     there yet is retried with backoff.
//
// The own cluster's pods are not put in the ipcache from here: their
// identities are allocated by the clustermesh-apiserver, and the tunnel
// entries already route to the right node. Remote clusters' ipcache entries
// come from their kvstores (package remotecluster).
//
// Informer handlers only enqueue keys; workers reconcile from the listers. Run
// first reconciles everything listed after the caches sync, flushes the
// merger and calls Config.OnSynced, so the datapath reconciler can delete
// restored entries the own cluster no longer wants.
package localcluster
