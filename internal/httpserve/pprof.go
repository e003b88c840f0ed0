package httpserve

import (
	"net/http"
	"net/http/pprof"
)

// PprofFlagUsage is the help text of both daemons' --pprof-address.
const PprofFlagUsage = "listen address of the Go profiler (net/http/pprof under /debug/pprof/; e.g. 127.0.0.1:6060); it exposes the process's memory and stacks, so bind it to loopback (empty: disabled)"

// Pprof returns the net/http/pprof handlers under /debug/pprof/, on a mux
// of their own (never http.DefaultServeMux), for a separate listener.
func Pprof() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
