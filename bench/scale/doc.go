// Package scale measures the agent and the kvstoremesh cache at the size of
// Cilium's clustermesh scale test (issue 16 §2): 250 remote clusters,
// 25,000 nodes, 250,000 ipcache entries, 25,000 identities, 2,500 services,
// a churn of 325 changes/s (bench/internal/remotedata).
//
// BenchmarkScaleAgent runs the real agent binary (a subprocess on the eBPF
// datapath, root only) in kvstoremesh mode against one local etcd holding
// the cache of the 250 clusters: time to every remote synced and
// programmed, RSS and Go heap per entry, churn lag and CPU per event.
// BenchmarkScaleFanout serves 500 watching agents from one etcd fed by a
// kvstoremesh at the churn rate. See bench/README.md for the method and
// the figures.
package scale
