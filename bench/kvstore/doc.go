// Package kvstorebench holds the benchmarks of the kvstore layer against a
// real embedded etcd on tmpfs: put → observer latency through the
// read-side watchstore compared with a raw etcd watch in the same run, and
// the throughput of listing 250,000 ipcache-style keys (pages of 10,000)
// raw, through kvstore.ListWatch and through a decoding watchstore. The
// results and the method are in bench/README.md.
package kvstorebench
