package daemon

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
)

type statusFunc func() []remotecluster.Status

func (f statusFunc) Status() []remotecluster.Status { return f() }

func TestProbes(t *testing.T) {
	tests := []struct {
		name      string
		ownSynced bool
		remotes   []remotecluster.Status
		ready     bool
		reason    string
	}{
		{"no remotes", true, nil, true, ""},
		{"own not synced", false, nil, false, "own cluster"},
		{"remote ready", true, []remotecluster.Status{{Name: "c2", Ready: true}}, true, ""},
		{"remote never reached", true, []remotecluster.Status{{Name: "c2", LastError: "connect: refused"}}, false, "c2: not synced: connect: refused"},
		{"remote unreachable after sync", true, []remotecluster.Status{{Name: "c2", Served: true}}, true, ""},
		{"remote refused", true, []remotecluster.Status{{Name: "c2", RefusedReason: "cluster ID conflict"}}, true, ""},
		{"one of two pending", true, []remotecluster.Status{{Name: "c2", Ready: true}, {Name: "c3"}}, false, "c3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := health{ownSynced: func() bool { return tt.ownSynced }, remotes: statusFunc(func() []remotecluster.Status { return tt.remotes })}
			rec := httptest.NewRecorder()
			h.healthz(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("healthz %d", rec.Code)
			}
			rec = httptest.NewRecorder()
			h.readyz(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			if (rec.Code == http.StatusOK) != tt.ready || !strings.Contains(rec.Body.String(), tt.reason) {
				t.Fatalf("readyz %d %q, want ready=%v with %q", rec.Code, rec.Body.String(), tt.ready, tt.reason)
			}
		})
	}
}
