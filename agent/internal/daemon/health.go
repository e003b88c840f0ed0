package daemon

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
)

// health serves the probes of the agent's pod on the metrics address.
//
// /healthz answers 200 while the process serves HTTP: the agent keeps the
// datapath as it is whatever its connections do, so restarting it never
// helps a remote problem.
//
// /readyz answers 200 once the agent programs the datapath from every
// source it can:
//   - its own cluster's Services, EndpointSlices and pods are synced, and
//   - every configured remote cluster is settled: ready (synced in the
//     current session), or served (it was ready since the agent started
//     and its last-known state is still programmed, as while it is
//     unreachable), or refused with a reason (cluster ID conflict,
//     incompatible cluster config, unusable config file), which no retry
//     of the agent can fix and `clustermesh status` shows.
//
// A remote that has never been reached since the agent started keeps the
// agent unready: its datapath would miss that cluster. Otherwise 503 with
// one line per reason.
type health struct {
	ownSynced func() bool
	remotes   interface{ Status() []remotecluster.Status }
}

func (h health) healthz(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, "ok")
}

func (h health) readyz(w http.ResponseWriter, _ *http.Request) {
	if reasons := h.notReady(); len(reasons) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(reasons, "\n"))
		return
	}
	fmt.Fprintln(w, "ok")
}

// notReady returns why the agent is not ready, nil when it is.
func (h health) notReady() []string {
	var out []string
	if !h.ownSynced() {
		out = append(out, "own cluster: not synced")
	}
	for _, r := range h.remotes.Status() {
		if r.Settled() {
			continue
		}
		reason := fmt.Sprintf("remote cluster %s: not synced", r.Name)
		if r.LastError != "" {
			reason += ": " + r.LastError
		}
		out = append(out, reason)
	}
	return out
}
