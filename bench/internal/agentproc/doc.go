// Package agentproc runs the real agent binary (bin/clustermesh-agent) as a
// subprocess for the benchmarks (bench/scale, bench/peer): its own state
// directory, status socket, metrics and pprof addresses and, on the eBPF
// datapath, its own pin directory under /run/clustermesh-test (no tunnel
// device: no host device is touched). It reads what a benchmark measures
// from outside the process: the status API, /readyz and /metrics, a GC
// forced through pprof, the resident set and CPU time from /proc.
package agentproc
