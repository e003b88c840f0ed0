package kubereach

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestObserveRateLimits(t *testing.T) {
	down := errors.New("connection refused")
	type step struct {
		after time.Duration
		err   error
	}
	tests := []struct {
		name  string
		steps []step
		want  []string // messages logged, in order
	}{
		{"healthy", []step{{0, nil}, {10 * time.Second, nil}}, nil},
		{"outage is logged once per minute", []step{
			{0, down}, {10 * time.Second, down}, {10 * time.Second, down}, {40 * time.Second, down}, {10 * time.Second, down},
		}, []string{"cannot reach the own kube-apiserver", "still cannot reach the own kube-apiserver"}},
		{"recovery is logged", []step{{0, nil}, {10 * time.Second, down}, {10 * time.Second, nil}, {10 * time.Second, nil}},
			[]string{"cannot reach the own kube-apiserver", "kube-apiserver reachable again"}},
		{"a second outage warns again", []step{{0, down}, {10 * time.Second, nil}, {time.Second, down}},
			[]string{"cannot reach the own kube-apiserver", "kube-apiserver reachable again", "cannot reach the own kube-apiserver"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			clk := clocktesting.NewFakeClock(time.Unix(1e9, 0))
			m := New(Config{}, nil, slog.New(slog.NewTextHandler(&buf, nil)), clk)
			for _, s := range tt.steps {
				clk.Step(s.after)
				m.Observe(s.err)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if _, msg, ok := strings.Cut(line, `msg="`); ok {
					got = append(got, msg[:strings.Index(msg, `"`)])
				}
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("logged %q, want %q\n%s", got, tt.want, buf.String())
			}
		})
	}
}

// TestProbeVersion probes a server that answers /version and an address
// where nothing listens.
func TestProbeVersion(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2"}`))
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	for _, tc := range []struct {
		name    string
		host    string
		wantErr bool
	}{
		{"answers", srv.URL, false},
		{"nothing listens", closed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kubernetes.NewForConfig(&rest.Config{Host: tc.host, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := ProbeVersion(c.Discovery())(); (err != nil) != tc.wantErr {
				t.Errorf("probe = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}
