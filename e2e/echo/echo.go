package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Config says who the server is and where it listens.
type Config struct {
	Cluster, Pod string
	HTTPAddr     string // e.g. ":8080"
	UDPAddr      string // e.g. ":8081"
}

// Run serves until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	id := cfg.Cluster + " " + cfg.Pod
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", cfg.UDPAddr)
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Connection", "close")
			fmt.Fprintln(w, id)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("udp: %w", err)
				}
				return
			}
			_, _ = pc.WriteTo(append([]byte(id+" "), buf[:n]...), from)
		}
	})
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	_ = srv.Close()
	_ = pc.Close()
	wg.Wait()
	return err
}
