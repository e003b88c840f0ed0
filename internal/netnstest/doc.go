// Package netnstest builds network topologies out of namespaces for tests
// that send real packets: "nodes" (a namespace each, joined by an underlay
// bridge and each with a `vxlan external` device) and "pods" (a namespace
// each, a veth into their node, a /32 address and a default route to the
// node). Every namespace is named cmt-*, is removed by t.Cleanup (also when
// the test fails), and Do runs code with sockets inside a namespace.
// It needs root and the ip command (iproute2).
package netnstest
