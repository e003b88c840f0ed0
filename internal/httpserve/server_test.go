package httpserve

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func TestPprofServes(t *testing.T) {
	s, err := Listen("127.0.0.1:0", Pprof(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	tests := []struct {
		name, path string
		status     int
		contains   string
	}{
		{name: "index", path: "/debug/pprof/", status: http.StatusOK, contains: "heap"},
		{name: "heap profile", path: "/debug/pprof/heap?debug=1", status: http.StatusOK, contains: "heap profile"},
		{name: "goroutines", path: "/debug/pprof/goroutine?debug=1", status: http.StatusOK, contains: "goroutine profile"},
		{name: "nothing else", path: "/metrics", status: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get("http://" + s.Addr() + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
		})
	}
}

func TestListenRefusesBadAddress(t *testing.T) {
	if _, err := Listen("256.0.0.1:0", Pprof(), slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Listen accepted an invalid address")
	}
}
