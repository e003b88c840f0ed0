// Package annotation is the one parser of the mesh annotations of a
// Kubernetes Service (global, shared, affinity, each with Cilium's legacy
// alias). The clustermesh-apiserver, which decides what to export, and the
// agent, which merges local and remote backends, both use it, so that every
// value, malformed ones included, means the same on both sides.
package annotation
