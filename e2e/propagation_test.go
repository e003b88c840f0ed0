//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// TestPropagationTimes measures, E2E_PROPAGATION_RUNS times (skipped when
// unset), how long a readiness change of a backend pod in cluster 2 takes to
// reach the service of a node in cluster 1: the pod is made unready, then
// ready again, and each time the test records when the API write returned,
// when a watch on cluster 2's EndpointSlices saw the slice change, and when
// the service map of c1/n1 (its pinned BPF maps, read every millisecond
// with bpf.DumpPinned) showed the backend gone or back. It logs p50/p99
// from the write and from the slice event. A figure for bench/, not an
// assertion.
func TestPropagationTimes(t *testing.T) {
	runs := measureRuns(t, "E2E_PROPAGATION_RUNS")
	m := mesh(t)
	const svc = "echo-propagation"
	vip := globalService(t, m, svc, map[string]string{"service.cilium.io/global": "true"}, 6)
	c2 := m.Clusters[1]
	pod := c2.Pods()[0]
	n1 := m.Clusters[0].Nodes[0]

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	t.Cleanup(func() { _ = pod.SetReady(context.Background(), true) })
	fe := datapath.Frontend{Addr: netip.AddrPortFrom(netip.MustParseAddr(vip), harness.ServiceHTTPPort), Proto: ipproto.TCP}
	be := netip.AddrPortFrom(pod.IP, harness.HTTPPort)
	// programmed says whether c1/n1's pinned BPF maps hold the backend
	// with a non-zero weight (slots) in the TCP frontend of the service.
	programmed := func() (bool, error) {
		st, err := bpf.DumpPinned(n1.PinDir())
		if err != nil {
			return false, err
		}
		for _, b := range st.Services[fe].Backends {
			if b.Addr == be && b.Weight > 0 {
				return true, nil
			}
		}
		return false, nil
	}

	var down, up []propagation
	for i := range 2 * runs {
		ready := i%2 == 1
		s, err := propagateOnce(ctx, c2, pod, svc, ready, programmed)
		if err != nil {
			t.Fatalf("run %d (ready=%v): %v", i/2+1, ready, err)
		}
		t.Logf("ready=%v: write → agent %v, slice event → agent %v, write → slice event %v", ready,
			s.fromWrite.Round(100*time.Microsecond), s.fromSlice.Round(100*time.Microsecond), s.sliceLag.Round(100*time.Microsecond))
		if ready {
			up = append(up, s)
		} else {
			down = append(down, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, r := range []struct {
		name string
		s    []propagation
	}{{"unready", down}, {"ready", up}} {
		var w, e, l []time.Duration
		for _, s := range r.s {
			w, e, l = append(w, s.fromWrite), append(e, s.fromSlice), append(l, s.sliceLag)
		}
		t.Logf("%d runs, %s %s/%s → c1/n1 service: from the API write p50 %v p99 %v max %v; from the EndpointSlice event p50 %v p99 %v max %v (write → slice event p50 %v p99 %v)",
			runs, r.name, c2.Name, pod.Name, pct(w, 0.5), pct(w, 0.99), pct(w, 1), pct(e, 0.5), pct(e, 0.99), pct(e, 1), pct(l, 0.5), pct(l, 0.99))
	}
}

// propagation is one readiness change as seen by the agent.
type propagation struct {
	fromWrite time.Duration // the API write's return → the agent
	fromSlice time.Duration // the EndpointSlice event → the agent
	sliceLag  time.Duration // the API write's return → the EndpointSlice event
}

// propagateOnce sets pod's readiness and times it until programmed() says
// ready.
func propagateOnce(ctx context.Context, c *harness.Cluster, pod *harness.Pod, svc string, ready bool,
	programmed func() (bool, error)) (s propagation, err error) {
	eps := c.CP.Client.DiscoveryV1().EndpointSlices(harness.PodNamespace)
	sel := metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc}
	list, err := eps.List(ctx, sel)
	if err != nil {
		return s, err
	}
	sel.ResourceVersion = list.ResourceVersion
	w, err := eps.Watch(ctx, sel)
	if err != nil {
		return s, err
	}
	sliceSeen := make(chan time.Time, 1) // the first event with the new readiness
	var wg sync.WaitGroup
	defer wg.Wait()
	defer w.Stop()
	wg.Go(func() {
		for ev := range w.ResultChan() {
			if es, ok := ev.Object.(*discoveryv1.EndpointSlice); ok && ev.Type != watch.Error && endpointReady(es, pod.IP.String()) == ready {
				sliceSeen <- time.Now()
				return
			}
		}
	})
	if err := pod.SetReady(ctx, ready); err != nil {
		return s, err
	}
	written := time.Now()
	var done time.Time
	for {
		ok, err := programmed()
		if err != nil {
			return s, err
		}
		if ok == ready {
			done = time.Now()
			break
		}
		if time.Since(written) > time.Minute {
			return s, fmt.Errorf("c1/n1 still shows %s ready=%v a minute after the write", pod.Name, !ready)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case at := <-sliceSeen:
		s.fromWrite, s.fromSlice, s.sliceLag = done.Sub(written), done.Sub(at), at.Sub(written)
		return s, nil
	case <-time.After(30 * time.Second):
		return s, errors.New("no EndpointSlice event with the new readiness within 30s")
	}
}

// endpointReady says whether es lists ip as a ready endpoint.
func endpointReady(es *discoveryv1.EndpointSlice, ip string) bool {
	for _, e := range es.Endpoints {
		if slices.Contains(e.Addresses, ip) {
			return e.Conditions.Ready == nil || *e.Conditions.Ready
		}
	}
	return false
}

// TestConnectTimes measures, E2E_CONNECT_RUNS times (skipped when unset),
// the time from `clustermesh connect` of the first and the last cluster
// (after both were disconnected, and the last one from every other cluster)
// to the first UDP echo answered across them: a pod of the first cluster
// sends a datagram to a pod of the last every 2 ms from one socket. It logs
// p50/p99 of the whole, of the connect step (the CLI and the harness
// mounting the Secrets) and of what follows. The other clusters are
// connected again after each run, and at the end even on failure. A figure
// for bench/, not an assertion.
func TestConnectTimes(t *testing.T) {
	runs := measureRuns(t, "E2E_CONNECT_RUNS")
	m := mesh(t)
	cl := clientPod(t, m)
	first, gone := m.Clusters[0], m.Clusters[len(m.Clusters)-1]
	target := gone.Pods()[0]
	t.Cleanup(func() { reconnect(t, m, gone) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var total, command, after []time.Duration
	for run := range runs {
		for _, c := range m.Clusters {
			if c != gone {
				if err := m.Disconnect(ctx, c, gone); err != nil {
					t.Fatal(err)
				}
			}
		}
		err := eventually(time.Minute, func() error {
			if _, err := cl.UDP(target.UDPAddr(), 300*time.Millisecond); err == nil {
				return fmt.Errorf("%s/%s still reaches %s/%s", first.Name, cl.Name, gone.Name, target.Name)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("run %d: %v", run+1, err)
		}
		time.Sleep(time.Second) // let the agents finish withdrawing
		var others []*harness.Cluster
		for _, c := range m.Clusters {
			if c != gone && c != first {
				others = append(others, c)
			}
		}
		for _, c := range others {
			if err := m.Connect(ctx, c, gone); err != nil {
				t.Fatal(err)
			}
		}
		tot, cmd, err := connectOnce(ctx, m, first, gone, cl, target)
		if err != nil {
			t.Fatalf("run %d: %v", run+1, err)
		}
		total, command, after = append(total, tot), append(command, cmd), append(after, tot-cmd)
		t.Logf("run %d at %s: first answer %v after the connect started (connect step %v)", run+1,
			time.Now().Format("15:04:05.000"), tot.Round(100*time.Microsecond), cmd.Round(100*time.Microsecond))
		if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
			t.Fatalf("run %d: %v", run+1, err)
		}
	}
	t.Logf("%d runs, connect %s↔%s → first UDP echo %s/%s → %s/%s: p50 %v p99 %v max %v; the connect step (CLI + mounting) p50 %v p99 %v; after it p50 %v p99 %v max %v",
		runs, first.Name, gone.Name, first.Name, cl.Name, gone.Name, target.Name,
		pct(total, 0.5), pct(total, 0.99), pct(total, 1), pct(command, 0.5), pct(command, 0.99),
		pct(after, 0.5), pct(after, 0.99), pct(after, 1))
}

// connectOnce connects r and e while from sends a UDP datagram to to's echo
// server every 2 ms, and returns the time from the start of the connect to
// the first answer, and how long the connect step itself took.
func connectOnce(ctx context.Context, m *harness.Mesh, r, e *harness.Cluster, from, to *harness.Pod) (total, command time.Duration, err error) {
	var pc net.PacketConn
	if err := from.NS.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		return 0, 0, err
	}
	dst := &net.UDPAddr{IP: to.IP.AsSlice(), Port: harness.UDPPort}
	answered := make(chan time.Time, 1) // the first answer from dst
	var wg sync.WaitGroup
	defer wg.Wait()
	defer pc.Close()
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			n, src, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if a, ok := src.(*net.UDPAddr); ok && a.IP.Equal(dst.IP) && n > 0 {
				answered <- time.Now()
				return
			}
		}
	})
	stop := make(chan struct{})
	defer func() { close(stop) }()
	start := time.Now()
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			_, _ = pc.WriteTo([]byte("connect-probe"), dst)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	if err := m.Connect(ctx, r, e); err != nil {
		return 0, 0, err
	}
	command = time.Since(start)
	select {
	case at := <-answered:
		return at.Sub(start), command, nil
	case <-time.After(2 * time.Minute):
		return 0, 0, fmt.Errorf("no UDP answer from %s/%s 2m after connecting %s and %s", e.Name, to.Name, r.Name, e.Name)
	}
}

// pct returns the p-quantile (nearest rank) of d, rounded to 0.1 ms.
func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1)+0.5)].Round(100 * time.Microsecond)
}
