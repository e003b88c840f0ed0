// Package agent benchmarks the clustermesh-agent's control plane against a
// real embedded etcd playing a remote cluster, with the in-memory datapath:
// remote put → datapath apply latency (next to a raw etcd watch on the same
// etcd in the same run), and the cold sync of a large remote cluster. See
// bench/README.md for results.
package agent
