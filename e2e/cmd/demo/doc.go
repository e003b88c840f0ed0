// Command demo runs `make demo` (package e2e/demo): three meshed clusters
// on this machine, a global service and a failover. It needs root.
package main
