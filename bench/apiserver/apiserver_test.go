package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// scale multiplies every size and duration of the benchmarks. The default,
// 1, is the full scale of the targets (make bench); set
// BENCH_APISERVER_SCALE=0.02 for a quick run.
func scale(b *testing.B) float64 {
	s := os.Getenv("BENCH_APISERVER_SCALE")
	if s == "" {
		return 1
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		b.Fatalf("BENCH_APISERVER_SCALE=%q: want a positive number", s)
	}
	return f
}

func scaled(b *testing.B, n int) int { return max(1, int(float64(n)*scale(b))) }

const cluster = "bench"

// env is one benchmark's world: a control plane, an etcd, and the
// clustermesh-apiserver binary between them.
type env struct {
	b    *testing.B
	ctx  context.Context
	cp   *kubetest.ControlPlane
	cs   kubernetes.Interface
	etcd *etcdserver.Server
	kv   *kvstore.Client
	bin  string
	dir  string
}

func newEnv(b *testing.B) *env {
	bin := testenv.KubeBinDir(b)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	dir := b.TempDir()
	if keep := os.Getenv("BENCH_APISERVER_KEEP"); keep != "" {
		dir = keep // logs of kube-apiserver, controller manager and clustermesh-apiserver stay here
	}
	cp, err := kubetest.Start(ctx, kubetest.Config{BinDir: bin, Dir: filepath.Join(dir, "kube"), Name: cluster}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cp.Stop)
	rest := *cp.REST
	rest.QPS, rest.Burst = 10000, 10000
	cs, err := kubernetes.NewForConfig(&rest)
	if err != nil {
		b.Fatal(err)
	}
	// The kvstore as deployed: fsync on. Like the reference numbers of
	// DESIGN §7, on tmpfs when there is one.
	etcdDir := filepath.Join(dir, "etcd")
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "cmt-bench-etcd-"); err == nil {
			etcdDir = filepath.Join(d, "etcd")
			b.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	srv, err := etcdserver.Start(ctx, etcdserver.Config{ClusterName: cluster, DataDir: etcdDir}, etcdserver.TestLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Stop)
	kv, err := kvstore.New(ctx, srv.AdminConfig(), etcdserver.TestLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { kv.Close() })
	exe := filepath.Join(dir, "clustermesh-apiserver")
	out, err := exec.Command("go", "build", "-o", exe, "github.com/clustermesh/clustermesh/clustermesh-apiserver").CombinedOutput()
	if err != nil {
		b.Fatalf("build clustermesh-apiserver: %v\n%s", err, out)
	}
	return &env{b: b, ctx: ctx, cp: cp, cs: cs, etcd: srv, kv: kv, bin: exe, dir: dir}
}

// startAPIServer starts the binary on the env's etcd and returns when it was
// started and a function waiting for /readyz.
func (e *env) startAPIServer() (started time.Time, waitReady func() time.Time) {
	b := e.b
	cfgFile := filepath.Join(e.dir, "kvstore.yaml")
	data, err := yaml.Marshal(e.etcd.AdminConfig())
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		b.Fatal(err)
	}
	port, err := etcdserver.FreePort("127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	health := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.Create(filepath.Join(e.dir, "clustermesh-apiserver.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(e.bin, "--cluster-name", cluster, "--cluster-id", "1", "--kubeconfig", e.cp.Kubeconfig(),
		"--kvstore-config", cfgFile, "--health-address", health, "--metrics-address", "")
	cmd.Stdout, cmd.Stderr = logf, logf
	started = time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		logf.Close()
	})
	return started, func() time.Time {
		deadline := time.Now().Add(30 * time.Minute)
		for time.Now().Before(deadline) {
			resp, err := http.Get("http://" + health + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return time.Now()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		b.Fatalf("clustermesh-apiserver not ready; log in %s", logf.Name())
		return time.Time{}
	}
}

// parallel runs f(i) for i in [0,n) on workers goroutines, failing b on error.
func parallel(b *testing.B, n, workers int, f func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		b.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

// ipOf returns a distinct IPv4 address for n < 2^24 under 10.0.0.0/8.
func ipOf(n int) string { return fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255) }

// globalService creates a selector-less global service and the EndpointSlice
// that the benchmark manages for it, with the given backend IPs.
func (e *env) globalService(ns, name string, ips []string) (*discoveryv1.EndpointSlice, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{"service.cilium.io/global": "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := e.cs.CoreV1().Services(ns).Create(e.ctx, svc, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench.clustermesh.test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	return e.cs.DiscoveryV1().EndpointSlices(ns).Create(e.ctx, es, metav1.CreateOptions{})
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkEndpointSliceToEtcd measures Kubernetes change → etcd commit: an
// EndpointSlice update through the kube-apiserver, at 1,000 updates/s spread
// over 256 global services by 64 writers, until the ClusterService carrying the new
// backend IP is seen by a watch on the apiserver's etcd. The latency runs
// from just before the update request, so it includes the kube-apiserver's
// own write (reported alone as k8s-p50/p99-ms); event-p50/p99-ms run from
// the moment a Kubernetes watch of the benchmark sees the update (when the
// clustermesh-apiserver's informer gets it too), which is the
// clustermesh-apiserver's own part. Run with -benchtime 1x.
func BenchmarkEndpointSliceToEtcd(b *testing.B) {
	e := newEnv(b)
	const ns, services, rate = "bench-latency", 256, 1000
	duration := time.Duration(float64(20*time.Second) * scale(b))
	if err := kubetest.EnsureNamespace(e.ctx, e.cs, ns); err != nil {
		b.Fatal(err)
	}
	slicesByWorker := make([]*discoveryv1.EndpointSlice, services)
	parallel(b, services, 16, func(i int) error {
		ips := make([]string, 10)
		for j := range ips {
			ips[j] = ipOf(1<<23 + i*16 + j)
		}
		es, err := e.globalService(ns, fmt.Sprintf("svc-%03d", i), ips)
		slicesByWorker[i] = es
		return err
	})
	_, waitReady := e.startAPIServer()
	waitReady()

	// Watch the services prefix: the first time a sent IP shows up as a
	// backend, its latency is recorded.
	var mu sync.Mutex
	sent := map[string]time.Time{}
	etcdSeen := map[string]time.Time{}
	var lat []time.Duration
	wctx, wcancel := context.WithCancel(e.ctx)
	defer wcancel()
	watching := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		wc := e.kv.Etcd().Watch(clientv3.WithRequireLeader(wctx), wire.ServicesPrefix(cluster), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		for resp := range wc {
			if resp.Created {
				close(watching)
				continue
			}
			now := time.Now()
			for _, ev := range resp.Events {
				var v struct {
					Backends map[string]json.RawMessage `json:"backends"`
				}
				if ev.Type != clientv3.EventTypePut || json.Unmarshal(ev.Kv.Value, &v) != nil {
					continue
				}
				mu.Lock()
				for ip := range v.Backends {
					if t, ok := sent[ip]; ok {
						lat = append(lat, now.Sub(t))
						delete(sent, ip)
						etcdSeen[ip] = now
					}
				}
				mu.Unlock()
			}
		}
	}()
	<-watching

	// A Kubernetes watch on the slices: when an update reaches watchers of
	// the kube-apiserver (as it reaches the clustermesh-apiserver's
	// informer), which isolates the clustermesh-apiserver's own part.
	kubeSeen := map[string]time.Time{}
	kw, err := e.cs.DiscoveryV1().EndpointSlices(ns).Watch(wctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	kubeDone := make(chan struct{})
	go func() {
		defer close(kubeDone)
		for ev := range kw.ResultChan() {
			es, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok || len(es.Endpoints) == 0 || len(es.Endpoints[0].Addresses) == 0 {
				continue
			}
			now := time.Now()
			mu.Lock()
			if ip := es.Endpoints[0].Addresses[0]; kubeSeen[ip].IsZero() {
				kubeSeen[ip] = now
			}
			mu.Unlock()
		}
	}()

	// Paced updates: a token every 1/rate, 16 writers, each owning a
	// disjoint set of slices (no update conflicts).
	const writers = 64
	tokens := make(chan int, rate)
	var k8sLat []time.Duration
	var k8sMu sync.Mutex
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range writers {
		wg.Go(func() {
			own := []*discoveryv1.EndpointSlice{}
			for i := w; i < services; i += writers {
				own = append(own, slicesByWorker[i])
			}
			turn := 0
			for seq := range tokens {
				es := own[turn%len(own)].DeepCopy()
				turn++
				ip := ipOf(seq)
				es.Endpoints[0].Addresses = []string{ip}
				t0 := time.Now()
				mu.Lock()
				sent[ip] = t0
				mu.Unlock()
				out, err := e.cs.DiscoveryV1().EndpointSlices(ns).Update(e.ctx, es, metav1.UpdateOptions{})
				if err != nil {
					b.Error(err)
					return
				}
				k8sMu.Lock()
				k8sLat = append(k8sLat, time.Since(t0))
				k8sMu.Unlock()
				own[(turn-1)%len(own)] = out
			}
		})
	}
	tick := time.NewTicker(time.Second / rate)
	seq := 0
	for time.Since(start) < duration {
		<-tick.C
		tokens <- seq
		seq++
	}
	tick.Stop()
	close(tokens)
	wg.Wait()
	sendTime := time.Since(start)
	// Let the last updates arrive.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(sent)
		mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.StopTimer()
	wcancel()
	<-watchDone
	kw.Stop()
	<-kubeDone
	mu.Lock()
	defer mu.Unlock()
	var own []time.Duration // kube watch event → etcd watch event
	for ip, t := range etcdSeen {
		if k, ok := kubeSeen[ip]; ok {
			own = append(own, max(t.Sub(k), 0))
		}
	}
	slices.Sort(own)
	slices.Sort(lat)
	slices.Sort(k8sLat)
	b.ReportMetric(ms(percentile(own, 0.50)), "event-p50-ms")
	b.ReportMetric(ms(percentile(own, 0.99)), "event-p99-ms")
	b.ReportMetric(float64(seq)/sendTime.Seconds(), "updates/s")
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(lat, 1)), "max-ms")
	b.ReportMetric(ms(percentile(k8sLat, 0.50)), "k8s-p50-ms")
	b.ReportMetric(ms(percentile(k8sLat, 0.99)), "k8s-p99-ms")
	// An update overtaken by the next one of the same slice before it was
	// written is coalesced: its IP never reaches etcd.
	b.ReportMetric(float64(len(sent)), "coalesced")
	b.Logf("%d updates in %s, %d observed in etcd", seq, sendTime.Round(time.Millisecond), len(lat))
}

// BenchmarkInitialPublish measures how long a clustermesh-apiserver started
// on an empty etcd takes to publish a cluster of 1,000 nodes, 50,000 pods
// (500 label sets, so 500 identities) and 1,000 global services (50
// backends each): from process start until /readyz, which needs every sync
// canary, i.e. every entry in etcd. Run with -benchtime 1x.
func BenchmarkInitialPublish(b *testing.B) {
	e := newEnv(b)
	nodes, pods, services := scaled(b, 1000), scaled(b, 50000), scaled(b, 1000)
	const namespaces, labelSets, backends = 50, 500, 50
	for i := range namespaces {
		if err := kubetest.EnsureNamespace(e.ctx, e.cs, fmt.Sprintf("bench-%02d", i)); err != nil {
			b.Fatal(err)
		}
	}
	fill := time.Now()
	parallel(b, nodes, 32, func(i int) error {
		_, err := kubetest.CreateNode(e.ctx, e.cs, kubetest.NodeSpec{
			Name: fmt.Sprintf("node-%04d", i), InternalIP: fmt.Sprintf("172.16.%d.%d", i>>8, i&255),
			PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 64+i>>8, i&255)},
		})
		return err
	})
	parallel(b, pods, 64, func(i int) error {
		node := i % nodes
		_, err := kubetest.CreateRunningPod(e.ctx, e.cs, kubetest.PodSpec{
			Namespace: fmt.Sprintf("bench-%02d", i%namespaces), Name: fmt.Sprintf("pod-%05d", i),
			NodeName: fmt.Sprintf("node-%04d", node), HostIP: fmt.Sprintf("172.16.%d.%d", node>>8, node&255),
			Labels: map[string]string{"app": fmt.Sprintf("app-%03d", i%labelSets)}, IPs: []string{ipOf(i)},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		})
		return err
	})
	parallel(b, services, 32, func(i int) error {
		ips := make([]string, backends)
		for j := range ips {
			ips[j] = ipOf((i*backends + j) % max(pods, 1))
		}
		_, err := e.globalService(fmt.Sprintf("bench-%02d", i%namespaces), fmt.Sprintf("svc-%04d", i), ips)
		return err
	})
	b.Logf("created %d nodes, %d pods, %d services in %s", nodes, pods, services, time.Since(fill).Round(time.Second))

	b.ResetTimer()
	started, waitReady := e.startAPIServer()
	ready := waitReady()
	b.StopTimer()
	total := ready.Sub(started)
	resp, err := e.kv.Etcd().Get(e.ctx, "cilium/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(total.Seconds(), "publish-s")
	b.ReportMetric(float64(resp.Count), "keys")
	b.ReportMetric(float64(nodes+pods+services)/total.Seconds(), "objects/s")
}
