// Package memory is an in-memory datapath.Writer for unit and integration tests
// of the agent's control plane. It forwards no packets.
package memory
