//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/e2e/kubenode"
	"github.com/clustermesh/clustermesh/internal/netns"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/ociimage"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// installVersion stamps the test's CLI and images alike, as `make build`
// and `make images` do from one commit.
const installVersion, installCommit = "v0.0.0-e2e", "e2e"

// installEnv is closed by the test, or by TestMain's teardown on a signal.
var installEnv atomic.Pointer[kubenode.Env]

// TestInstallOnKubelets installs the product as a user would on two real
// single-node clusters (kubelet, containerd, CNI ptp, kube-proxy): `make
// images` archives imported into containerd, `clustermesh enable` (chart,
// agent DaemonSet and apiserver Deployment as pods), `connect`, `status
// --wait`; then pod to pod across the clusters, a global service answered
// from both, a plain ClusterIP service still served by kube-proxy, a
// CiliumNetworkPolicy and a NetworkPolicy across the clusters enforced and
// traced, and `clustermesh disable` leaving no program, pin or tunnel
// device. Every step is logged, so a failure says how far the install got.
// It runs with the e2e suite (make test) and alone with `make
// test-install`; it skips, naming what is missing, where the machine lacks
// a requirement (fails under CI and make test).
func TestInstallOnKubelets(t *testing.T) {
	testenv.RequireRoot(t)
	kubeBin := testenv.KubeBinDir(t)
	for _, b := range []string{"kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(kubeBin, b)); err != nil {
			testenv.Unavailable(t, "missing "+b+" in KUBE_BIN_DIR="+kubeBin+" (hack/kube-bins.sh builds it)")
		}
	}
	for _, c := range []string{"containerd", "ctr", "runc", "iptables", "nsenter", "mount", "bpftool", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local"} {
		testenv.RequireCommand(t, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := filepath.Join(workDir, "install")
	modDir, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	built, err := ociimage.Build(ctx, ociimage.BuildConfig{ModDir: modDir, OutDir: filepath.Join(dir, "images"), Version: installVersion, Commit: installCommit})
	if err != nil {
		t.Fatal(err)
	}
	var images []kubenode.Image
	refs := map[string]string{}
	for _, b := range built {
		images = append(images, kubenode.Image{Archive: b.Archive, Ref: b.Ref})
		refs[b.Name] = b.Ref
	}
	cli := filepath.Join(dir, "clustermesh")
	build := exec.CommandContext(ctx, "go", "build", "-ldflags", ociimage.LDFlags(installVersion, installCommit), "-o", cli, "./cmd/clustermesh")
	build.Dir = modDir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the CLI: %v: %s", err, out)
	}
	t.Logf("step 1: images and CLI built (%s)", time.Since(start).Round(time.Second))

	env, err := kubenode.Start(ctx, kubenode.Config{
		KubeBinDir: kubeBin, Images: images, Dir: dir, Run: netnstest.RandomID()[:6],
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, "c1", "c2")
	if err != nil {
		t.Fatalf("start clusters (logs in %s): %v", dir, err)
	}
	installEnv.Store(env)
	t.Cleanup(env.Close)
	c1, c2 := env.Clusters[0], env.Clusters[1]
	t.Logf("step 2: two clusters with a Ready kubelet node each, kube-proxy programmed (%s)", time.Since(start).Round(time.Second))

	for _, c := range env.Clusters {
		for _, name := range []string{"echo-a", "echo-b"} {
			createEchoPod(t, ctx, c, name, refs["clustermesh-echo"])
		}
	}
	pods := map[string]*corev1.Pod{}
	for _, c := range env.Clusters {
		for _, name := range []string{"echo-a", "echo-b"} {
			pods[c.Name+"/"+name] = waitPodReady(t, ctx, c, "default", name)
		}
	}
	client := podNS(t, c1, "echo-a")
	if got := httpGet(t, client, podAddr(pods["c1/echo-b"])); got != "c1 echo-b" {
		t.Fatalf("c1/echo-a → c1/echo-b answered %q", got)
	}
	t.Logf("step 3: echo pods from our image Running and Ready in both clusters, pod to pod inside c1 works (%s)", time.Since(start).Round(time.Second))

	for _, c := range env.Clusters {
		ns := podNS(t, c, "echo-b")
		api := net.JoinHostPort(c.ServiceIP().String(), "443")
		if err := ns.Do(func() error {
			conn, err := net.DialTimeout("tcp", api, 5*time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		}); err != nil {
			t.Fatalf("%s: a pod cannot reach its kube-apiserver at %s through kube-proxy: %v", c.Name, api, err)
		}
	}
	localIP := createService(t, ctx, c1, "local", nil)
	expectServedBy(t, client, localIP, 20, map[string]bool{"c1": true})
	t.Logf("step 4: pods reach their kube-apiserver (ClusterIP 443) and a non-global ClusterIP %s served by kube-proxy from c1", localIP)

	kubeconfig := c1.Kubeconfig() + string(os.PathListSeparator) + c2.Kubeconfig()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, cli, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("clustermesh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// A fresh bpffs holds the kernel's own maps.debug and progs.debug: what
	// is there before enable is not ours.
	bpffsBefore := map[string][]string{}
	// Programs of ours loaded before enable belong to other agents on this
	// machine (the e2e suite's shared mesh runs beside this test): only
	// the ones loaded since must be gone after disable.
	progsBefore := cmPrograms(t)
	for _, c := range env.Clusters {
		n := c.Nodes[0]
		bpffsBefore[n.Name] = filesUnder(t, n.BPFFS)
		// The CNI's range: the cluster's pod CIDRs (ptp with host-local on
		// spec.podCIDR), so that the agent decides world (step 11b).
		set := "--set=agent.bpffsPath=" + n.BPFFS + ",agent.stateDir=" + n.AgentState +
			fmt.Sprintf(",agent.clusterCIDRs={10.%d.0.0/16}", c.ID)
		if mode := os.Getenv("E2E_CONNECTION"); mode != "" {
			set += ",agent.connectionMode=" + mode // else the chart's default
		}
		run("enable", "--context="+c.Name, "--cluster-name="+c.Name, fmt.Sprintf("--cluster-id=%d", c.ID), set)
	}
	for _, c := range env.Clusters {
		for _, app := range []string{"clustermesh-agent", "clustermesh-apiserver"} {
			p := waitAppReady(t, ctx, c, app)
			if want := refs[app]; p.Spec.Containers[0].Image != want {
				t.Errorf("%s/%s runs image %s, want %s (what make images built)", c.Name, app, p.Spec.Containers[0].Image, want)
			}
		}
	}
	t.Logf("step 5: clustermesh enable: agent and apiserver pods Running and Ready in both clusters (%s)", time.Since(start).Round(time.Second))

	run("connect", "--context=c1", "--destination-context=c2", "--skip-endpoint-check")
	t.Logf("step 6: clustermesh connect done")
	out := run("status", "--context=c1", "--context=c2", "--wait", "--timeout=3m")
	t.Logf("step 7: clustermesh status --wait: mesh ready (%s)\n%s", time.Since(start).Round(time.Second), out)
	for _, c := range env.Clusters {
		// The server certificate covers the node addresses from enable on:
		// no agent dial may fail its check (connect used to add them, and
		// the agents dialled the old certificate until the kubelet
		// refreshed the apiserver's Secret volume).
		p := waitAppReady(t, ctx, c, "clustermesh-agent")
		if logs := c.Nodes[0].PodLogTail(p, 1<<20); strings.Contains(logs, "x509") {
			t.Errorf("%s: the agent's log has TLS verification errors:\n%s", c.Name, grepLines(logs, "x509", 5))
		}
	}

	target := podAddr(pods["c2/echo-a"])
	if err := eventually(time.Minute, func() error {
		got, err := httpGetErr(client, target)
		if err == nil && got != "c2 echo-a" {
			err = fmt.Errorf("answered %q", got)
		}
		return err
	}); err != nil {
		logNetState(t, env, func() { _, _ = httpGetErr(client, target) })
		t.Fatalf("c1/echo-a → c2/echo-a (%s) through the tunnel: %v", target, err)
	}
	t.Logf("step 8: pod in c1 reaches pod in c2 (%s)", target)

	// The agents reach their own cluster's etcd at the apiserver's Service
	// name, which these clusters' nodes cannot resolve (no cluster DNS):
	// only resolving it through the Kubernetes API gives them their own
	// pods' identities (allocated in cluster c: c.ID<<16 | n).
	for _, c := range env.Clusters {
		id, err := ownPodIdentity(ctx, filepath.Join(c.Nodes[0].AgentState, "agent.sock"), "default/echo-a", uint32(c.ID))
		if err != nil {
			p := waitAppReady(t, ctx, c, "clustermesh-agent")
			t.Fatalf("%s: the agent does not know the identity of its pod default/echo-a: %v\n%s", c.Name, err,
				grepLines(c.Nodes[0].PodLogTail(p, 1<<20), "own cluster's etcd", 5))
		}
		t.Logf("%s: agent knows default/echo-a as identity %d", c.Name, id)
	}
	t.Logf("step 8b: agents know their own pods' identities (own etcd dialled by Service name through the Kubernetes API)")

	global := map[string]string{"service.cilium.io/global": "true"}
	gIP := createService(t, ctx, c1, "global", global)
	createService(t, ctx, c2, "global", global)
	expectServedBy(t, client, gIP, 60, map[string]bool{"c1": true, "c2": true})
	t.Logf("step 9: global service %s answered from c1 and c2", gIP)

	expectServedBy(t, client, localIP, 20, map[string]bool{"c1": true})
	t.Logf("step 10: non-global ClusterIP %s still served from c1 only (translated for pods by the agent beside kube-proxy)", localIP)

	stepStart := time.Now()
	installPolicyStep(ctx, t, c1, c2, pods["c2/echo-a"])
	t.Logf("step 11: a CiliumNetworkPolicy, then a NetworkPolicy, of c2 lets only c1's echo-a in: c1's and c2's echo-b denied, counted, traced; allowed again once deleted (%s, step %s)",
		time.Since(start).Round(time.Second), time.Since(stepStart).Round(100*time.Millisecond))
	stepStart = time.Now()
	installWorldStep(ctx, t, env.DC, c2, pods["c2/echo-a"])
	t.Logf("step 11b: with agent.clusterCIDRs, an address outside the cluster is denied to c2's echo-a in ingress default deny, counted, and let in by fromEntities world (step %s)",
		time.Since(stepStart).Round(100*time.Millisecond))
	stepStart = time.Now()
	installServiceEgressStep(ctx, t, c2, pods["c2/echo-a"])
	t.Logf("step 11c: c2's echo-b in egress default deny reaches a non-global ClusterIP of echo-a allowed toEndpoints echo-a, is denied and counted with only world allowed, traced to the backend (step %s)",
		time.Since(stepStart).Round(100*time.Millisecond))

	for _, c := range env.Clusters {
		run("disable", "--context="+c.Name)
	}
	for _, c := range env.Clusters {
		waitAppGone(t, ctx, c, "clustermesh-agent")
		n := c.Nodes[0]
		if pins := filesUnder(t, n.BPFFS); !slices.Equal(pins, bpffsBefore[n.Name]) {
			t.Errorf("%s: pins left after disable: %v (before enable: %v)", n.Name, pins, bpffsBefore[n.Name])
		}
		// bpftool 7.1 (bookworm) does not list tcx attachments under `net
		// show`; an attached program stays loaded, so none of those loaded
		// since enable may be left.
		if left := slices.DeleteFunc(cmPrograms(t), func(p string) bool { return slices.Contains(progsBefore, p) }); len(left) > 0 {
			t.Errorf("%s: BPF programs loaded since enable still loaded after disable:\n%s", n.Name, strings.Join(left, "\n"))
		}
		if out, err := n.NS.Exec("bpftool", "net", "show"); err != nil || strings.Contains(string(out), "cm_") {
			t.Errorf("%s: tc filters still attached after disable (%v):\n%s", n.Name, err, out)
		}
		if out, err := n.NS.IP("-d", "-o", "link", "show", "type", "vxlan"); err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("%s: tunnel device left after disable (%v): %s", n.Name, err, out)
		}
	}
	t.Logf("step 12: clustermesh disable left no pin, program or tunnel device (%s)", time.Since(start).Round(time.Second))
}

// ownPodIdentity waits until the agent at socket knows pod (namespace/name)
// as a local endpoint with an identity of cluster id, and returns it.
func ownPodIdentity(ctx context.Context, socket, pod string, id uint32) (uint32, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	client := agentv1.NewStatusClient(conn)
	var got uint32
	err = eventually(2*time.Minute, func() error {
		resp, err := client.GetPolicy(ctx, &agentv1.GetPolicyRequest{Endpoint: pod})
		if err != nil {
			return err
		}
		if len(resp.GetEndpoints()) != 1 {
			return fmt.Errorf("%d endpoints for %s", len(resp.GetEndpoints()), pod)
		}
		got = resp.GetEndpoints()[0].GetIdentity()
		if got>>16 != id || got&0xffff < 256 {
			return fmt.Errorf("identity %d of %s is not one of cluster %d", got, pod, id)
		}
		return nil
	})
	return got, err
}

func createEchoPod(t *testing.T, ctx context.Context, c *kubenode.Cluster, name, image string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": "echo", "pod": name}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "echo", Image: image, ImagePullPolicy: corev1.PullNever,
				Args:  []string{"-cluster=" + c.Name, "-pod=" + name},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: harness.HTTPPort}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(harness.HTTPPort)}}, PeriodSeconds: 1},
			}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	if _, err := c.CP.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", c.Name, name, err)
	}
}

func waitPodReady(t *testing.T, ctx context.Context, c *kubenode.Cluster, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := eventually(3*time.Minute, func() error {
		p, err := c.CP.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		return podReady(p, &pod)
	})
	if err != nil {
		t.Fatalf("pod %s/%s/%s not ready (kubelet log %s): %v", c.Name, ns, name, c.Nodes[0].Kubelet.Log, err)
	}
	return pod
}

func podReady(p *corev1.Pod, out **corev1.Pod) error {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			*out = p
			return nil
		}
	}
	var why []string
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Waiting != nil {
			why = append(why, s.Name+": "+s.State.Waiting.Reason+" "+s.State.Waiting.Message)
		}
		if s.State.Terminated != nil {
			why = append(why, s.Name+": terminated "+s.State.Terminated.Reason+" "+s.State.Terminated.Message)
		}
	}
	return fmt.Errorf("pod %s %s not ready: %v %v", p.Name, p.Status.Phase, why, p.Status.Conditions)
}

// waitAppReady waits for the one pod of app in the clustermesh namespace.
func waitAppReady(t *testing.T, ctx context.Context, c *kubenode.Cluster, app string) *corev1.Pod {
	t.Helper()
	var pod, last *corev1.Pod
	sel := labels.Set{"app.kubernetes.io/name": app}.String()
	err := eventually(4*time.Minute, func() error {
		l, err := c.CP.Client.CoreV1().Pods("clustermesh-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return err
		}
		if len(l.Items) != 1 {
			return fmt.Errorf("%d pods of %s", len(l.Items), app)
		}
		last = &l.Items[0]
		return podReady(last, &pod)
	})
	if err != nil {
		logs := ""
		if last != nil {
			logs = c.Nodes[0].PodLogTail(last, 1500)
		}
		t.Fatalf("%s/%s: %v\n%s", c.Name, app, err, logs)
	}
	return pod
}

func waitAppGone(t *testing.T, ctx context.Context, c *kubenode.Cluster, app string) {
	t.Helper()
	sel := labels.Set{"app.kubernetes.io/name": app}.String()
	err := eventually(2*time.Minute, func() error {
		l, err := c.CP.Client.CoreV1().Pods("clustermesh-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil && len(l.Items) > 0 {
			err = fmt.Errorf("%d pods of %s left", len(l.Items), app)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
}

// podNS is the network namespace of the echo pod name of c, found through
// its server process (its arguments name cluster and pod).
func podNS(t *testing.T, c *kubenode.Cluster, name string) *netns.NS {
	t.Helper()
	pids := kubenode.ProcessesMatching(func(args []string) bool {
		return len(args) == 3 && strings.HasSuffix(args[0], "/clustermesh-echo") && args[1] == "-cluster="+c.Name && args[2] == "-pod="+name
	})
	if len(pids) == 1 {
		return netns.FromPath(c.Name+"/"+name, fmt.Sprintf("/proc/%d/ns/net", pids[0]))
	}
	t.Fatalf("%d echo processes for %s/%s, want 1", len(pids), c.Name, name)
	return nil
}

// podAddr is the echo server's HTTP address on a pod.
func podAddr(p *corev1.Pod) string {
	return net.JoinHostPort(p.Status.PodIP, strconv.Itoa(harness.HTTPPort))
}

// httpGetErr makes one new HTTP connection to addr from ns and returns the
// echo server's answer ("<cluster> <pod>").
func httpGetErr(ns *netns.NS, addr string) (string, error) {
	var conn net.Conn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }, DisableKeepAlives: true}
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

func httpGet(t *testing.T, ns *netns.NS, addr string) string {
	t.Helper()
	got, err := httpGetErr(ns, addr)
	if err != nil {
		t.Fatalf("HTTP from %s to %s: %v", ns.Name, addr, err)
	}
	return got
}

func createService(t *testing.T, ctx context.Context, c *kubenode.Cluster, name string, annotations map[string]string) string {
	t.Helper()
	return createServiceFor(t, ctx, c, name, annotations, map[string]string{"app": "echo"})
}

// createServiceFor creates a ClusterIP Service of the pods selector selects
// (port 80 to their HTTP port) and returns its ClusterIP.
func createServiceFor(t *testing.T, ctx context.Context, c *kubenode.Cluster, name string, annotations, selector map[string]string) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(harness.HTTPPort), Protocol: corev1.ProtocolTCP}},
		},
	}
	s, err := c.CP.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", c.Name, name, err)
	}
	return s.Spec.ClusterIP
}

// expectServedBy makes n new connections to ip:80 and expects every one
// answered, by exactly the clusters in want (each at least once).
func expectServedBy(t *testing.T, ns *netns.NS, ip string, n int, want map[string]bool) {
	t.Helper()
	var seen map[string]int
	err := eventually(time.Minute, func() error {
		seen = map[string]int{}
		for range n {
			got, err := httpGetErr(ns, net.JoinHostPort(ip, "80"))
			if err != nil {
				return err
			}
			seen[strings.Fields(got)[0]]++
		}
		for c := range want {
			if seen[c] == 0 {
				return fmt.Errorf("%s never answered: %v", c, seen)
			}
		}
		for c := range seen {
			if !want[c] {
				return fmt.Errorf("%s answered: %v", c, seen)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("service %s from %s: %v", ip, ns.Name, err)
	}
}

// grepLines returns the first n lines of s that contain sub.
// cmPrograms lists the loaded BPF programs named cm_* on this machine
// (`bpftool prog show` lines).
func cmPrograms(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("bpftool", "prog", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool prog show: %v: %s", err, out)
	}
	var progs []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, " name cm_") {
			progs = append(progs, strings.TrimSpace(l))
		}
	}
	return progs
}

func grepLines(s, sub string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && len(out) < n {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// filesUnder lists the files (pins) below dir.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
