// Package httpserve serves one HTTP handler on one address as a
// Run(ctx) error part (the daemons' health, metrics and profiling
// listeners), and the net/http/pprof handler behind --pprof-address.
package httpserve
