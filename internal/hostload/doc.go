// Package hostload reads the machine's load average, which every benchmark
// figure is reported with (the machine is shared: a figure means little
// without the load it was taken under).
package hostload
