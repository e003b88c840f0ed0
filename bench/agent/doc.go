// Package agent benchmarks the clustermesh-agent's control plane against a
// real embedded etcd playing a remote cluster, with the in-memory datapath:
// remote put → datapath apply latency (next to a raw etcd watch on the same
// etcd in the same run), the cold sync of a large remote cluster, and the
// lag under sustained ipcache churn at fixed offered rates. See
// bench/README.md for results.
package agent
