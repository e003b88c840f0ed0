package server

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"golang.org/x/tools/txtar"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

var update = flag.Bool("update", false, "rewrite the expected etcd contents in testdata/*.txtar from what the test sees")

// The control plane is shared by every test of the package (a kube-apiserver
// costs ~260 MB and ~10 s): tests run one after the other, each in its own
// namespace, and delete what they created (nodes are cluster-wide).
var (
	cpOnce sync.Once
	cp     *kubetest.ControlPlane
	cpDir  string
	cpErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if cp != nil {
		cp.Stop()
	}
	if cpDir != "" {
		os.RemoveAll(cpDir)
	}
	if code == 0 {
		if err := goleak.Find(goleakOptions()...); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func goleakOptions() []goleak.Option {
	return []goleak.Option{
		// Process-wide background goroutines of klog and of the etcd/grpc client libraries.
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		goleak.IgnoreAnyFunction("k8s.io/apimachinery/pkg/util/wait.BackoffUntilWithContext"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	}
}

func controlPlane(t *testing.T) *kubetest.ControlPlane {
	t.Helper()
	bin := testenv.KubeBinDir(t)
	cpOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cmt-apiserver-kube-")
		if err != nil {
			cpErr = err
			return
		}
		cpDir = dir
		cp, cpErr = kubetest.Start(context.Background(), kubetest.Config{BinDir: bin, Dir: dir, Name: "apiserver-test", Controllers: controllers}, slog.New(slog.DiscardHandler))
	})
	if cpErr != nil {
		t.Fatalf("control plane: %v", cpErr)
	}
	return cp
}

// harness runs one scenario: a namespace in the shared control plane, an
// embedded etcd of its own, a clustermesh-apiserver (Server) between them,
// and testdata/<name>.txtar holding the expected etcd contents per step.
type harness struct {
	t       *testing.T
	ctx     context.Context
	cp      *kubetest.ControlPlane
	cs      kubernetes.Interface
	etcd    *etcdserver.Server
	kv      *kvstore.Client
	ns      string
	cluster string
	id      uint32
	clock   clock.WithTicker
	grace   time.Duration

	file    string
	archive *txtar.Archive
	used    map[string]bool

	nodes  []string
	cancel context.CancelFunc
	done   chan error // result of the running server's Run
}

func newHarness(t *testing.T, name, about string) *harness {
	cp := controlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	h := &harness{
		t: t, ctx: ctx, cp: cp, cs: cp.Client, ns: name, cluster: "c1", id: 7,
		clock: clock.RealClock{}, grace: time.Hour, used: map[string]bool{},
		file: filepath.Join("testdata", name+".txtar"),
	}
	a, err := txtar.ParseFile(h.file)
	if err != nil {
		if !*update {
			t.Fatal(err)
		}
		a = &txtar.Archive{}
	}
	if *update {
		a.Comment = []byte(about + "\n\nEach section is the whole etcd after one step of " + t.Name() + ": keys in order,\n" +
			"(leased) when the key is held by a lease, JSON indented, RFC 3339 times as <timestamp>.\n" +
			"Regenerate with: go test ./clustermesh-apiserver/internal/server -run " + t.Name() + " -args -update\n")
	}
	h.archive = a
	h.etcd = etcdserver.StartTest(t, etcdserver.Config{ClusterName: h.cluster})
	h.kv = h.connect(h.etcd.AdminConfig())
	if err := kubetest.EnsureNamespace(ctx, h.cs, h.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.cleanup)
	return h
}

func (h *harness) connect(cfg kvstore.Config) *kvstore.Client {
	h.t.Helper()
	c, err := kvstore.New(h.ctx, cfg, etcdserver.TestLogger())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// start runs a Server until stop (or the end of the test).
func (h *harness) start() {
	h.t.Helper()
	cfg := DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = h.cluster, h.id
	cfg.IdentityGracePeriod = h.grace
	log := etcdserver.TestLogger()
	s, err := New(h.ctx, cfg, Deps{
		KV: h.kv, Kube: h.cs, NewStore: SyncStoreFactory(h.kv, log, nil), Clock: h.clock,
		Registry: prometheus.NewRegistry(), Log: log,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- s.Run(ctx) }()
}

func (h *harness) stop() {
	h.t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("server: %v", err)
	}
	h.cancel = nil
}

func (h *harness) cleanup() {
	h.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	zero := int64(0)
	del := metav1.DeleteOptions{GracePeriodSeconds: &zero}
	_ = h.cs.CoreV1().Pods(h.ns).DeleteCollection(ctx, del, metav1.ListOptions{})
	svcs, _ := h.cs.CoreV1().Services(h.ns).List(ctx, metav1.ListOptions{})
	if svcs != nil {
		for _, s := range svcs.Items {
			_ = h.cs.CoreV1().Services(h.ns).Delete(ctx, s.Name, del)
		}
	}
	for _, n := range h.nodes {
		_ = h.cs.CoreV1().Nodes().Delete(ctx, n, del)
	}
	if *update && !h.t.Failed() {
		if err := os.WriteFile(h.file, txtar.Format(h.archive), 0o644); err != nil {
			h.t.Error(err)
		}
	}
	for _, f := range h.archive.Files {
		if !h.used[f.Name] && !*update && !h.t.Failed() && !h.t.Skipped() {
			h.t.Errorf("%s: section %q is never checked", h.file, f.Name)
		}
	}
}

// expect waits until the etcd contents equal section step of the scenario
// file (or, with -update, until they are stable, and records them).
func (h *harness) expect(step string) {
	h.t.Helper()
	h.used[step] = true
	var want []byte
	for _, f := range h.archive.Files {
		if f.Name == step {
			want = f.Data
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	var got []byte
	if *update {
		// Settle: the same dump twice, 2 s apart.
		prev := h.dump()
		for time.Now().Before(deadline) {
			time.Sleep(2 * time.Second)
			got = h.dump()
			if bytes.Equal(got, prev) {
				break
			}
			prev = got
		}
		h.setSection(step, got)
		return
	}
	if want == nil {
		h.t.Fatalf("%s: no section %q (run with -update to record it)", h.file, step)
	}
	for time.Now().Before(deadline) {
		got = h.dump()
		if bytes.Equal(got, want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Fatalf("%s: step %q: etcd contents differ\n%s", h.file, step, diff(want, got))
}

func (h *harness) setSection(name string, data []byte) {
	for i, f := range h.archive.Files {
		if f.Name == name {
			h.archive.Files[i].Data = data
			return
		}
	}
	h.archive.Files = append(h.archive.Files, txtar.File{Name: name, Data: data})
}

var timestampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$`)

// dump renders every key of the etcd: the key, "(leased)" when it is held by
// a lease, and the value (JSON indented, RFC 3339 timestamps replaced by
// <timestamp>), keys in order, separated by blank lines.
func (h *harness) dump() []byte {
	h.t.Helper()
	resp, err := h.kv.Etcd().Get(h.ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		h.t.Fatalf("dump etcd: %v", err)
	}
	var b bytes.Buffer
	kvs := resp.Kvs
	sort.Slice(kvs, func(i, j int) bool { return string(kvs[i].Key) < string(kvs[j].Key) })
	for i, kv := range kvs {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.Write(kv.Key)
		if kv.Lease != 0 {
			b.WriteString(" (leased)")
		}
		b.WriteByte('\n')
		v := kv.Value
		var ind bytes.Buffer
		switch {
		case timestampRE.Match(v):
			b.WriteString("<timestamp>\n")
		case json.Valid(v) && len(v) > 0 && (v[0] == '{' || v[0] == '['):
			_ = json.Indent(&ind, v, "", "  ")
			b.Write(ind.Bytes())
			b.WriteByte('\n')
		default:
			b.Write(v)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func diff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	inW, inG := map[string]int{}, map[string]int{}
	for _, l := range w {
		inW[l]++
	}
	for _, l := range g {
		inG[l]++
	}
	var b strings.Builder
	for _, l := range w {
		if inG[l] == 0 {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if inW[l] == 0 {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	fmt.Fprintf(&b, "--- got in full:\n%s", got)
	return b.String()
}

// Kubernetes objects, created through the API.

func (h *harness) node(name, internalIP string, podCIDRs ...string) {
	h.t.Helper()
	if _, err := kubetest.CreateNode(h.ctx, h.cs, kubetest.NodeSpec{Name: name, InternalIP: internalIP, PodCIDRs: podCIDRs}); err != nil {
		h.t.Fatal(err)
	}
	h.nodes = append(h.nodes, name)
}

func (h *harness) pod(name, node, hostIP string, labels map[string]string, ips ...string) {
	h.t.Helper()
	_, err := kubetest.CreateRunningPod(h.ctx, h.cs, kubetest.PodSpec{
		Namespace: h.ns, Name: name, NodeName: node, HostIP: hostIP, Labels: labels, IPs: ips,
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

// service creates a Service selecting app=web with a fixed ClusterIP (so that
// the scenario files do not depend on the allocator).
func (h *harness) service(name, clusterIP string, annotations map[string]string) {
	h.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name, Annotations: annotations},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP,
			Selector:  map[string]string{"app": "web"},
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := h.cs.CoreV1().Services(h.ns).Create(h.ctx, svc, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// waitBackends waits until the EndpointSlices of service name list exactly
// the usable (ready, or serving while terminating) addresses want, sorted.
func (h *harness) waitBackends(name string, want ...string) {
	h.t.Helper()
	sort.Strings(want)
	var got []string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		list, err := h.cs.DiscoveryV1().EndpointSlices(h.ns).List(h.ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
		if err != nil {
			h.t.Fatal(err)
		}
		got = got[:0]
		for _, es := range list.Items {
			for _, ep := range es.Endpoints {
				c := ep.Conditions
				if (c.Ready == nil || *c.Ready) || (c.Serving != nil && *c.Serving && c.Terminating != nil && *c.Terminating) {
					got = append(got, ep.Addresses...)
				}
			}
		}
		sort.Strings(got)
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Fatalf("endpoints of %s: %v, want %v", name, got, want)
}

func (h *harness) deletePod(name string, force bool) {
	h.t.Helper()
	opts := metav1.DeleteOptions{}
	if force {
		zero := int64(0)
		opts.GracePeriodSeconds = &zero
	}
	if err := h.cs.CoreV1().Pods(h.ns).Delete(h.ctx, name, opts); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updatePod(name string, mut func(*corev1.Pod)) {
	h.t.Helper()
	p, err := h.cs.CoreV1().Pods(h.ns).Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	mut(p)
	if _, err := h.cs.CoreV1().Pods(h.ns).Update(h.ctx, p, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updateService(name string, mut func(*corev1.Service)) {
	h.t.Helper()
	s, err := h.cs.CoreV1().Services(h.ns).Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	mut(s)
	if _, err := h.cs.CoreV1().Services(h.ns).Update(h.ctx, s, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

var (
	_ = clocktesting.NewFakeClock
	_ = wire.HeartbeatKey
)

var (
	metav1GetOptions    = metav1.GetOptions{}
	metav1UpdateOptions = metav1.UpdateOptions{}
	metav1DeleteOptions = metav1.DeleteOptions{}
)

// controllers are the kube-controller-manager controllers the scenarios need.
var controllers = []string{"endpointslice-controller", "serviceaccount-controller", "serviceaccount-token-controller"}
