// Package procmem reads a benchmark process's resources: resident set size
// (of this process or another one, an agent binary), live heap after a
// collection, a heap profile, and the CPU time of this process or another
// one (an etcd child, an agent binary).
package procmem
