//go:build e2e

package e2e

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// load sends new HTTP connections from a pod without pause, one goroutine
// per target address, until stop; it counts what was sent and what failed.
type load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	failures     []string // the first failures; guarded by mu
	done         chan struct{}
	wg           sync.WaitGroup
	stopOnce     sync.Once
}

// startLoad sends an HTTP request (a new connection, 2 s timeout) from
// `from` to each of addrs every 10 ms.
func startLoad(from *harness.Pod, addrs ...string) *load {
	l := &load{done: make(chan struct{})}
	for _, addr := range addrs {
		l.every(10*time.Millisecond, func() {
			l.sent.Add(1)
			if _, err := from.HTTP(addr, 2*time.Second); err != nil {
				l.fail(addr + ": " + err.Error())
			}
		})
	}
	return l
}

// every runs f every d until stop.
func (l *load) every(d time.Duration, f func()) {
	l.wg.Go(func() {
		for {
			select {
			case <-l.done:
				return
			default:
			}
			f()
			time.Sleep(d)
		}
	})
}

func (l *load) fail(what string) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) < 10 {
		l.failures = append(l.failures, time.Now().Format("15:04:05.000")+" "+what)
	}
}

// stop ends the load (once; later calls return the same) and returns the
// requests sent and failed and the first failures.
func (l *load) stop() (sent, failed int64, first []string) {
	l.stopOnce.Do(func() {
		close(l.done)
		l.wg.Wait()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent.Load(), l.failed.Load(), l.failures
}
