package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// churnConfig is the workload of BenchmarkSustainedChurn; every field can be
// set from the environment (see loadChurnConfig).
type churnConfig struct {
	rates   []int         // offered events/s, one sub-benchmark pair each
	dur     time.Duration // how long the writers offer load at each rate
	txnOps  int           // events per etcd transaction
	writers int           // concurrent writer goroutines
	entries int           // ipcache entries present before the churn starts
}

func loadChurnConfig(b *testing.B) churnConfig {
	c := churnConfig{rates: []int{5000, 10000, 20000, 30000, 40000}, dur: 10 * time.Second, txnOps: 20, writers: 4, entries: 10000}
	atoi := func(name string, dst *int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want a positive integer", name, v)
			}
			*dst = n
		}
	}
	if v := os.Getenv("BENCH_CHURN_RATES"); v != "" {
		c.rates = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("BENCH_CHURN_RATES=%q: want comma-separated positive integers", v)
			}
			c.rates = append(c.rates, n)
		}
	}
	if v := os.Getenv("BENCH_CHURN_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			b.Fatalf("BENCH_CHURN_DURATION=%q: want a positive duration", v)
		}
		c.dur = d
	}
	atoi("BENCH_CHURN_TXN_OPS", &c.txnOps)
	atoi("BENCH_CHURN_WRITERS", &c.writers)
	atoi("BENCH_CHURN_ENTRIES", &c.entries)
	c.txnOps = min(c.txnOps, 128) // etcd's default --max-txn-ops
	return c
}

// BenchmarkSustainedChurn offers a fixed rate of ipcache creates, updates and
// deletes (1:1:1) of remote cluster c2 for a fixed time and measures, per
// event, the lag from just before its transaction was sent (so it includes
// etcd's commit; most events are visible before the transaction's response
// reaches the writer, so timing from the response would read 0) until it is
// visible: programmed in the agent's memory datapath ("agent"), or delivered
// by a raw clientv3 watch on the same etcd with no agent running ("watch",
// etcd's own share of the cost on this machine).
// Sub-benchmarks rate=N/{watch,agent}; see loadChurnConfig for the knobs.
func BenchmarkSustainedChurn(b *testing.B) {
	cfg := loadChurnConfig(b)
	for _, rate := range cfg.rates {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			b.Run("watch", func(b *testing.B) { runChurn(b, cfg, rate, false) })
			b.Run("agent", func(b *testing.B) { runChurn(b, cfg, rate, true) })
		})
	}
}

// churnSlot is one remote IP. A slot has at most one event in flight: the
// writers take slots whose last event was observed, so what the observer
// sees for a slot always tells whether its in-flight event is done.
type churnSlot struct {
	ip      netip.Addr
	present bool // in etcd after the slot's last event
	updated bool // the present entry was updated since its create
}

// churnEvent is one create, update or delete.
type churnEvent struct {
	slot   int
	seq    uint32 // encoded in HostIP (the datapath's TunnelEndpoint) of puts
	del    bool
	sent   time.Time // just before its transaction was sent; under churn.mu
	commit time.Time // when its transaction returned to the writer; under churn.mu
	seen   time.Time // when the observer saw it done; under churn.mu
}

// churn is the state shared by writers and the observer.
type churn struct {
	mu      sync.Mutex
	slots   []churnSlot         // guarded by mu
	free    []int               // slots with no event in flight, FIFO; guarded by mu
	pending map[int]*churnEvent // slot → its event in flight; guarded by mu
	events  []*churnEvent       // every churn event, in issue order; guarded by mu
	seq     uint32              // last sequence number; guarded by mu
}

func churnIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(remoteID + i>>16), byte(i >> 8), byte(i)})
}

func churnSlotOf(ip netip.Addr) (int, bool) {
	a := ip.As4()
	if !ip.Is4() || a[0] != 10 || a[1] < remoteID {
		return 0, false
	}
	return int(a[1]-remoteID)<<16 | int(a[2])<<8 | int(a[3]), true
}

// churnHostIP carries an event's sequence number through decoding into the
// datapath entry: 100.64.0.0/10 holds 2^22 of them.
func churnHostIP(seq uint32) netip.Addr {
	v := 0x64400000 | seq&0x3fffff
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func churnValue(ip netip.Addr, seq uint32) string {
	v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: churnHostIP(seq), ID: remoteID<<16 | 256 + seq%1000,
		K8sNamespace: "churn", K8sPodName: fmt.Sprintf("pod-%d", seq)})
	if err != nil {
		panic(err)
	}
	return string(v)
}

// take hands out n slots with no event in flight (the oldest settled first,
// new IPs when none is free) and records their next events.
func (c *churn) take(n int) ([]clientv3.Op, []*churnEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ops := make([]clientv3.Op, 0, n)
	evs := make([]*churnEvent, 0, n)
	for range n {
		var i int
		if len(c.free) > 0 {
			i, c.free = c.free[0], c.free[1:]
		} else {
			i = len(c.slots)
			c.slots = append(c.slots, churnSlot{ip: churnIP(i)})
		}
		s := &c.slots[i]
		c.seq++
		ev := &churnEvent{slot: i, seq: c.seq}
		switch {
		case !s.present:
			s.present, s.updated = true, false
			ops = append(ops, clientv3.OpPut(wire.IPKey(s.ip), churnValue(s.ip, ev.seq)))
		case !s.updated:
			s.updated = true
			ops = append(ops, clientv3.OpPut(wire.IPKey(s.ip), churnValue(s.ip, ev.seq)))
		default:
			s.present, ev.del = false, true
			ops = append(ops, clientv3.OpDelete(wire.IPKey(s.ip)))
		}
		c.pending[i] = ev
		c.events = append(c.events, ev)
		evs = append(evs, ev)
	}
	return ops, evs
}

// settle marks the in-flight events of the given slots seen at now and frees
// the slots.
func (c *churn) settle(slots []int, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range slots {
		if ev := c.pending[i]; ev != nil {
			ev.seen = now
			delete(c.pending, i)
			c.free = append(c.free, i)
		}
	}
}

func (c *churn) backlog() (n int, oldest time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for _, ev := range c.pending {
		if !ev.commit.IsZero() {
			oldest = max(oldest, now.Sub(ev.commit))
		}
	}
	return len(c.pending), oldest
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func runChurn(b *testing.B, cfg churnConfig, rate int, withAgent bool) {
	e := setup(b)
	c := &churn{pending: map[int]*churnEvent{}}
	// Entries present before the churn, settled: the writers update and
	// delete them, then create them again.
	var ops []clientv3.Op
	for i := range cfg.entries {
		s := churnSlot{ip: churnIP(i), present: true}
		c.seq++
		ops = append(ops, clientv3.OpPut(wire.IPKey(s.ip), churnValue(s.ip, c.seq)))
		c.slots = append(c.slots, s)
		c.free = append(c.free, i)
	}
	e.put(b, ops)
	e.canaries(b)

	obsCtx, stopObs := context.WithCancel(context.Background())
	defer stopObs()
	var obs sync.WaitGroup
	if withAgent {
		e.writeConfig(b)
		a := startAgent(e.dir)
		defer a.Stop()
		deadline := time.Now().Add(time.Minute)
		for {
			ch := a.Datapath.Changed()
			if a.Ready() {
				if st, _ := a.Datapath.Dump(); len(st.IPCache) == cfg.entries {
					break
				}
			}
			select {
			case <-ch:
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				b.Fatal("agent did not sync the initial entries in a minute")
			}
		}
		// After every datapath change, check each slot with an event in
		// flight; its event is done when the entry carries its sequence
		// number (put) or is gone (delete). The time is taken after the
		// check, so the lag is an upper bound by the check's duration.
		obs.Go(func() {
			type check struct {
				slot int
				pfx  netip.Prefix
				seq  uint32
				del  bool
			}
			var todo []check
			var done []int
			for {
				ch := a.Datapath.Changed()
				todo = todo[:0]
				c.mu.Lock()
				for i, ev := range c.pending {
					todo = append(todo, check{i, netip.PrefixFrom(c.slots[i].ip, 32), ev.seq, ev.del})
				}
				c.mu.Unlock()
				done = done[:0]
				for _, k := range todo {
					got, ok := a.Datapath.IPCache(k.pfx)
					if k.del && !ok || !k.del && ok && got.TunnelEndpoint == churnHostIP(k.seq) {
						done = append(done, k.slot)
					}
				}
				if len(done) > 0 {
					c.settle(done, time.Now())
				}
				select {
				case <-ch:
				case <-obsCtx.Done():
					return
				}
			}
		})
	} else {
		// The raw watch uses its own connection, as the agent would.
		wc, err := kvstore.New(context.Background(), e.srv.AdminConfig(), log)
		if err != nil {
			b.Fatal(err)
		}
		defer wc.Close()
		// Watch from the revision after the preload, so no churn event is
		// missed while the watch is being set up.
		resp, err := e.admin.Etcd().Get(context.Background(), wire.IPPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			b.Fatal(err)
		}
		wch := wc.Etcd().Watch(obsCtx, wire.IPPrefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		obs.Go(func() {
			var done []int
			for wr := range wch {
				now := time.Now()
				done = done[:0]
				for _, ev := range wr.Events {
					ip, err := netip.ParseAddr(strings.TrimPrefix(string(ev.Kv.Key), wire.IPPrefix))
					if err != nil {
						continue
					}
					if i, ok := churnSlotOf(ip); ok {
						done = append(done, i) // a slot has one event in flight: this one
					}
				}
				c.settle(done, now)
			}
		})
	}

	wall0, cpu0 := time.Now(), cpuTime()
	b.ResetTimer()
	start := time.Now()
	end := start.Add(cfg.dur)
	interval := time.Duration(float64(time.Second) * float64(cfg.txnOps) / float64(rate))
	var next atomic.Int64
	var writers sync.WaitGroup
	var werr atomic.Value
	for range cfg.writers {
		writers.Go(func() {
			for {
				due := start.Add(time.Duration(next.Add(1)-1) * interval)
				if !due.Before(end) {
					return
				}
				time.Sleep(time.Until(due))
				ops, evs := c.take(cfg.txnOps)
				sent := time.Now()
				if _, err := e.admin.Etcd().Txn(context.Background()).Then(ops...).Commit(); err != nil {
					werr.Store(err)
					return
				}
				now := time.Now()
				c.mu.Lock()
				for _, ev := range evs {
					ev.sent, ev.commit = sent, now
				}
				c.mu.Unlock()
			}
		})
	}
	writers.Wait()
	written := time.Since(start)
	if err, _ := werr.Load().(error); err != nil {
		b.Fatal(err)
	}
	backlog, oldest := c.backlog()
	drainStart := time.Now()
	for n, _ := c.backlog(); n > 0 && time.Since(drainStart) < time.Minute; n, _ = c.backlog() {
		time.Sleep(time.Millisecond)
	}
	drain := time.Since(drainStart)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	wall := time.Since(wall0)
	stopObs()
	obs.Wait()

	c.mu.Lock()
	defer c.mu.Unlock()
	// lags: from just before the transaction was sent (includes etcd's
	// commit; an upper bound). retLags: from its response (a lower bound:
	// most events are seen before the response reaches the writer, they
	// count as 0).
	lags := make([]time.Duration, 0, len(c.events))
	retLags := make([]time.Duration, 0, len(c.events))
	lost, early := 0, 0
	for _, ev := range c.events {
		if ev.seen.IsZero() {
			lost++
			continue
		}
		lags = append(lags, ev.seen.Sub(ev.sent))
		if ev.seen.Before(ev.commit) {
			early++
		}
		retLags = append(retLags, max(0, ev.seen.Sub(ev.commit)))
	}
	achieved := float64(len(c.events)) / written.Seconds()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	p50, p99, pmax := percentile(lags, 0.5), percentile(lags, 0.99), percentile(lags, 1)
	b.ReportMetric(float64(rate), "offered-ev/s")
	b.ReportMetric(achieved, "ev/s")
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(pmax), "max-ms")
	b.ReportMetric(ms(percentile(retLags, 0.99)), "ret-p99-ms")
	b.ReportMetric(float64(backlog), "backlog-ev")
	b.ReportMetric(ms(drain), "drain-ms")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-cores")
	what := "raw watch"
	if withAgent {
		what = "agent"
	}
	b.Logf("%s: offered %d/s for %v (%d ops/txn, %d writers, %d initial entries): %d events in %v = %.0f/s; lag from send p50 %v p99 %v max %v, from the response p99 %v; "+
		"backlog at end %d (oldest %v), drained in %v, %d never seen, %d seen before the commit returned; process CPU %.2f cores; loadavg %s",
		what, rate, cfg.dur, cfg.txnOps, cfg.writers, cfg.entries, len(c.events), written.Round(time.Millisecond), achieved,
		p50, p99, pmax, percentile(retLags, 0.99), backlog, oldest.Round(time.Millisecond), drain.Round(time.Millisecond), lost, early, cpu.Seconds()/wall.Seconds(), hostload.Average())
}
