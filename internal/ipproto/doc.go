// Package ipproto owns the L4 protocol type: the protocol numbers of the IP
// header the mesh deals with (service frontends, policy keys, drop events)
// and their names. Both the datapath contract (internal/datapath) and the
// policy resolver (agent/internal/policy) use it; it depends on nothing.
package ipproto
