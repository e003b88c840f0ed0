// Package servicemerge computes the datapath services of one agent: for every
// Service of the agent's own cluster it merges the local EndpointSlice backends
// with the backends that remote clusters export for the same namespace/name
// (DESIGN §4), and emits one datapath.Service per frontend (ClusterIP, port,
// protocol) with weighted backends.
//
// # Inputs
//
//   - the local Service (ClusterIPs, ports, annotations parsed by
//     annotation.Parse, shared with the clustermesh-apiserver: global,
//     shared, affinity);
//   - the local EndpointSlices of that Service; an endpoint is a backend when it
//     is ready, or serving while terminating;
//   - the remote ClusterServices, one per remote cluster.
//
// Remote backends are used only if the local Service is global and the remote
// one is shared (every exported remote service is global by construction).
// Backends are matched to a frontend by port name and protocol, as kube-proxy
// and Cilium do.
//
// # Affinity and the anti-flood failback rule
//
// affinity=none spreads new connections over every local and remote backend
// (weight 1 each). affinity=remote uses remote backends when there are any,
// local ones otherwise. affinity=local uses local backends while at least one
// is ready; when none is, the frontend fails over to the remote backends.
// Backends that are known but not preferred stay in the set with weight 0
// (datapath.Backend: not selected for new connections), so established flows
// to them are not cut.
//
// Failing back is where all-or-nothing implementations hurt: the first local
// pod that becomes ready after a scale-from-zero receives all new traffic. The
// rule here: when a frontend fails over, the merger remembers the peak number
// of ready local backends of the episode that just ended (P). While failed
// over, the frontend fails back only once
//
//	ready local ≥ target = max(1, min(ceil(FailbackShare × P), known local))
//
// where "known local" counts every local endpoint in the EndpointSlices, ready
// or not (so a deployment that was scaled down for good does not pin the
// frontend in the mixed state). Until then, the ready local backends and the
// remote backends are all in the set with weight 1: a single returning pod
// gets 1/(1+remote) of the new connections rather than all of them. The
// default FailbackShare is 0.5.
//
// The rule is evaluated when the merger flushes, so a local count that drops to
// zero and recovers within one flush never fails over at all.
//
// # Cost: whole services and backend patches
//
// Every input event costs a few map updates and marks its Service dirty;
// Run flushes dirty Services in batches (events that arrive while a batch
// is handled coalesce into the next one). Local backends are kept per port
// in maps (reference-counted over the EndpointSlices), remote ones per
// cluster and port in sorted slices. An event also records which backends
// it may have changed.
//
// A flush evaluates the affinity and failback rule per port. When the
// weights of a port change (failover, failback, affinity=remote losing or
// regaining its remote backends) or the Service itself changed (the local
// Service, a remote cluster added, removed, or changing its cluster ID or
// "shared"), every frontend of the Service is recomputed and handed to the
// sink whole (UpsertService, O(backends · log backends)). Otherwise only
// the changed backends are resolved (local if ready, else the export of the
// remote with the lowest cluster ID; an address is one backend) and handed
// on as a datapath.ServicePatch of each frontend of their port: one backend
// change costs the same whatever the service's size, down to the eBPF maps
// (dpsync and the bpf Writer apply patches in O(changed backends)).
//
// An EndpointSlice change costs O(endpoints of that slice), without
// allocating when it only flips the readiness of a few endpoints. A remote
// ClusterService carries all its backends in one kvstore value, so its
// update is compared with the previous export in O(n log n) of that
// remote's backends (sort and merge); what it hands on is the difference.
package servicemerge
