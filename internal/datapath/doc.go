// Package datapath is the contract between the agent's control plane and the
// programs that forward packets: the desired state the agent computes (tunnel
// routes, ipcache entries, load-balanced services, local endpoints) and the
// narrow Writer interface that applies it. The eBPF implementation lives in
// bpf/; an in-memory one for tests of the logic above it is in
// internal/datapath/memory.
package datapath
