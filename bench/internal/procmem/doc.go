// Package procmem reads the benchmark process's memory: resident set size,
// live heap after a collection, and a heap profile.
package procmem
