// Package netns manages named network namespaces (as `ip netns add` makes
// them) for the project's own test hosts: create and remove them, run ip
// commands and programs inside them, and run Go code on a thread switched into
// one. The bpf tests (through internal/netnstest) and the e2e harness both
// build their topologies on it.
package netns
