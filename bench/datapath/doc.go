// Package datapath benchmarks the eBPF datapath of package bpf: map update
// throughput through the Writer (single versus batched updates) and TCP
// throughput and connect latency between pods over the tunnel, through a
// service frontend, between pods of one node, and over a plain veth, all
// measured in one run so the ratios compare like with like. It needs root;
// see bench/README.md for the method and the numbers.
package datapath
