package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// unprivileged lets the agent DaemonSet pass a kube-apiserver that runs with
// its default --allow-privileged=false, as the test control planes do.
const unprivileged = "--set=agent.securityContext.privileged=false"

// TestMeshLifecycle drives the CLI against three real kube-apiservers:
// enable, connect (twice), refusals, mesh mode, status and disconnect. The
// subtests share the clusters and run in order.
func TestMeshLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiservers")
	}
	e := startClusters(t, "c1", "c2", "c3")
	ctx := context.Background()

	t.Run("enable", func(t *testing.T) {
		for i, n := range []string{"c1", "c2", "c3"} {
			out := e.mustRun(t, "enable", unprivileged, "--context", n, "--cluster-name", n, "--cluster-id", string(rune('1'+i)))
			if !strings.Contains(out, "installed in context "+n) {
				t.Errorf("enable %s: %q", n, out)
			}
		}
		cm, err := e.client("c2").CoreV1().ConfigMaps(ns).Get(ctx, "clustermesh-config", metav1.GetOptions{})
		if err != nil || cm.Data["cluster-name"] != "c2" || cm.Data["cluster-id"] != "2" {
			t.Fatalf("clustermesh-config of c2: %v %v", cm, err)
		}
		before := e.versions(t)
		out := e.mustRun(t, "enable", unprivileged, "--context", "c1", "--cluster-name", "c1", "--cluster-id", "1")
		if !strings.Contains(out, "upgraded") || !strings.Contains(out, "revision 2") {
			t.Errorf("re-enable: %q", out)
		}
		after := e.versions(t)
		for _, s := range []string{"c1/secret/clustermesh-ca", "c1/secret/clustermesh-apiserver-server-cert", "c1/secret/clustermesh-apiserver-admin-cert"} {
			if before[s] == "" || before[s] != after[s] {
				t.Errorf("%s changed on re-enable: %q -> %q", s, before[s], after[s])
			}
		}
		if _, _, err := e.run(t, "enable", unprivileged, "--context", "c1", "--cluster-name", "c1", "--cluster-id", "5"); !errors.Is(err, mesh.ErrClusterIdentityChange) {
			t.Errorf("changing the ID: err = %v", err)
		}
		if _, _, err := e.run(t, "enable", unprivileged, "--context", "c1", "--cluster-name", "c1", "--cluster-id", "0"); !errors.Is(err, mesh.ErrInvalidClusterID) {
			t.Errorf("ID 0: err = %v", err)
		}
	})

	t.Run("rbac-lets-components-publish-status", func(t *testing.T) {
		as := func(sa string) kubernetes.Interface {
			cfg := rest.CopyConfig(e.cps["c1"].REST)
			cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			return cs
		}
		agent, api := as("clustermesh-agent"), as("clustermesh-apiserver")
		agentReport := &meshstatus.AgentReport{Cluster: "c1", Node: "node-c1"}
		apiReport := &meshstatus.APIServerReport{Cluster: "c1", ClusterID: 1}
		for _, step := range []struct {
			name string
			c    kubernetes.Interface
			ns   string
			r    meshstatus.Report
		}{
			{"agent creates", agent, ns, agentReport},
			{"apiserver creates", api, ns, apiReport},
			{"agent updates", agent, ns, &meshstatus.AgentReport{Cluster: "c1", Node: "node-c1", Remotes: []meshstatus.Remote{{Name: "c2"}}}},
			{"apiserver updates", api, ns, &meshstatus.APIServerReport{Cluster: "c1", ClusterID: 1, Ready: true}},
		} {
			if err := meshstatus.Publish(ctx, step.c.CoreV1(), step.ns, step.r); err != nil {
				t.Errorf("%s: %v", step.name, err)
			}
		}
		if err := meshstatus.Publish(ctx, agent.CoreV1(), "default", agentReport); !apierrors.IsForbidden(err) {
			t.Errorf("agent publishing outside the release namespace: err = %v", err)
		}
		if _, err := api.CoreV1().ConfigMaps(ns).Get(ctx, "clustermesh-remote-users", metav1.GetOptions{}); err != nil {
			t.Errorf("apiserver reading the remote users: %v", err)
		}
		if _, err := api.CoreV1().ConfigMaps(ns).Get(ctx, "clustermesh-config", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("apiserver reading another ConfigMap: err = %v", err)
		}
		if _, err := agent.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("agent listing Secrets: err = %v", err)
		}
		// The agent may write its status, nothing else: not the remote
		// users (who may read this cluster's etcd), not the config.
		admin := e.client("c1").CoreV1().ConfigMaps(ns)
		for _, name := range []string{"clustermesh-remote-users", "clustermesh-config"} {
			cm, err := admin.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cm.Data = map[string]string{"users.yaml": "users: [{cluster: intruder}]\n"}
			if _, err := agent.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
				t.Errorf("agent updating %s: err = %v", name, err)
			}
			if err := agent.CoreV1().ConfigMaps(ns).Delete(ctx, name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
				t.Errorf("agent deleting %s: err = %v", name, err)
			}
		}
		other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "clustermesh-remote-users-2", Namespace: ns}}
		if _, err := agent.CoreV1().ConfigMaps(ns).Create(ctx, other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("agent creating a ConfigMap that is not its status: err = %v", err)
		}
		if err := meshstatus.Publish(ctx, agent.CoreV1(), ns, &meshstatus.AgentReport{Cluster: "c1", Node: "node-c1", Remotes: []meshstatus.Remote{{Name: "c3"}}}); err != nil {
			t.Errorf("agent publishing its status after the refused writes: %v", err)
		}
		for _, r := range []meshstatus.Report{agentReport, apiReport} {
			if err := meshstatus.Delete(ctx, e.client("c1").CoreV1(), ns, r); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("connect-refuses-unreachable-endpoint", func(t *testing.T) {
		before := e.versions(t)
		_, _, err := e.run(t, "connect", "--context", "c1", "--destination-context", "c2", "--dial-timeout", "300ms")
		if !errors.Is(err, mesh.ErrEndpointUnreachable) || !strings.Contains(err.Error(), "--skip-endpoint-check") {
			t.Fatalf("err = %v", err)
		}
		if after := e.versions(t); !equalMaps(before, after) {
			t.Error("a refused connect wrote objects")
		}
	})

	t.Run("connect", func(t *testing.T) {
		listen(t, e.nodeIP["c1"]+":32379")
		listen(t, e.nodeIP["c2"]+":32379")
		out := e.mustRun(t, "connect", "--context", "c1", "--destination-context", "c2")
		if !strings.Contains(out, "connected: c1 <-> c2") {
			t.Errorf("output %q", out)
		}
		data := e.remotes(t, "c1")
		wantCfg := "endpoints:\n  - https://" + e.nodeIP["c2"] + ":32379\n" +
			"trusted-ca-file: /var/lib/clustermesh/remote-clusters/c2.etcd-client-ca.crt\n" +
			"cert-file: /var/lib/clustermesh/remote-clusters/c2.etcd-client.crt\n" +
			"key-file: /var/lib/clustermesh/remote-clusters/c2.etcd-client.key\n"
		if string(data["c2"]) != wantCfg {
			t.Errorf("c1's config for c2:\n%s\nwant:\n%s", data["c2"], wantCfg)
		}
		ca := secretCert(t, e, "c2", "clustermesh-ca", "ca.crt")
		client := parsePEM(t, data["c2.etcd-client.crt"])
		if client.Subject.CommonName != "remote-c1" {
			t.Errorf("client CN %q", client.Subject.CommonName)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("client certificate not signed by c2's CA: %v", err)
		}
		if !strings.Contains(string(data["c2.etcd-client-ca.crt"]), "BEGIN CERTIFICATE") || !strings.Contains(string(data["c2.etcd-client.key"]), "PRIVATE KEY") {
			t.Error("CA or key missing")
		}
		server := secretCert(t, e, "c2", "clustermesh-apiserver-server-cert", "tls.crt")
		if err := server.VerifyHostname(e.nodeIP["c2"]); err != nil {
			t.Errorf("c2's server certificate does not cover its endpoint: %v", err)
		}
		if u := e.users(t, "c2"); len(u) != 1 || u[0] != "c1" {
			t.Errorf("users of c2: %v", u)
		}
		if u := e.users(t, "c1"); len(u) != 1 || u[0] != "c2" {
			t.Errorf("users of c1: %v", u)
		}
		if _, ok := e.remotes(t, "c2")["c1"]; !ok {
			t.Error("c2 has no config for c1")
		}
	})

	t.Run("connect-again-changes-nothing", func(t *testing.T) {
		listen(t, e.nodeIP["c1"]+":32379")
		listen(t, e.nodeIP["c2"]+":32379")
		before := e.versions(t)
		out := e.mustRun(t, "connect", "--context", "c1", "--destination-context", "c2")
		if !strings.Contains(out, "nothing changed") {
			t.Errorf("output %q", out)
		}
		if after := e.versions(t); !equalMaps(before, after) {
			t.Errorf("second connect wrote objects:\nbefore %v\nafter  %v", before, after)
		}
	})

	t.Run("upgrade-keeps-remote-users", func(t *testing.T) {
		e.mustRun(t, "enable", unprivileged, "--context", "c2", "--cluster-name", "c2", "--cluster-id", "2")
		if u := e.users(t, "c2"); len(u) != 1 || u[0] != "c1" {
			t.Errorf("users of c2 after upgrade: %v", u)
		}
	})

	t.Run("connect-switches-auth-mode", func(t *testing.T) {
		listen(t, e.nodeIP["c1"]+":32379")
		listen(t, e.nodeIP["c2"]+":32379")
		for _, step := range []struct {
			mode, cn string
			clusters []string
			legacy   []string
		}{
			{"legacy", "remote", []string{}, []string{"c1"}},
			{"cluster", "remote-c1", []string{"c1"}, nil},
		} {
			e.mustRun(t, "connect", "--context", "c1", "--destination-context", "c2", "--auth-mode", step.mode)
			if cn := parsePEM(t, e.remotes(t, "c1")["c2.etcd-client.crt"]).Subject.CommonName; cn != step.cn {
				t.Errorf("%s: c1's client CN for c2 is %q, want %q", step.mode, cn, step.cn)
			}
			if c, l := e.usersFile(t, "c2"); fmt.Sprint(c) != fmt.Sprint(step.clusters) || fmt.Sprint(l) != fmt.Sprint(step.legacy) {
				t.Errorf("%s: users of c2: clusters %v legacy %v, want %v and %v", step.mode, c, l, step.clusters, step.legacy)
			}
		}
		if _, _, err := e.run(t, "connect", "--context", "c1", "--destination-context", "c2", "--auth-mode", "none"); !errors.Is(err, mesh.ErrUsage) {
			t.Errorf("unknown auth mode: %v", err)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		// A real second installation named c1 in another namespace of c3.
		e.mustRun(t, "--namespace", "dup-name", "enable", unprivileged, "--set", "apiserver.service.nodePort=0", "--context", "c3", "--cluster-name", "c1", "--cluster-id", "7")
		fakeInfo(t, e, "c3", "dup-id", "c9", "1", "255")
		fakeInfo(t, e, "c3", "known-id", "c9", "2", "255")
		fakeInfo(t, e, "c3", "max511", "c8", "8", "511")
		fakeInfo(t, e, "c3", "zero", "c7", "0", "255")
		c1 := open(t, e, "c1", ns)
		cases := []struct {
			namespace string
			want      error
			text      string
		}{
			{"dup-name", mesh.ErrClusterNameConflict, `both are named "c1"`},
			{"dup-id", mesh.ErrClusterIDConflict, "both have ID 1"},
			{"known-id", mesh.ErrClusterIDConflict, "already connected to c2 with ID 2"},
			{"max511", mesh.ErrMaxConnectedMismatch, "c1 has 255, c8 has 511"},
			{"zero", mesh.ErrInvalidClusterID, "ID 0"},
			{"not-enabled", mesh.ErrNotEnabled, "clustermesh enable"},
		}
		for _, tc := range cases {
			t.Run(tc.namespace, func(t *testing.T) {
				before := e.versions(t)
				_, err := mesh.Connect(ctx, c1, []*mesh.Cluster{open(t, e, "c3", tc.namespace)}, mesh.ConnectConfig{SkipEndpointCheck: true}, discard())
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.text)
				}
				if after := e.versions(t); !equalMaps(before, after) {
					t.Error("a refused connect wrote objects")
				}
			})
		}
		// The same refusal through the CLI: one context given twice.
		if _, _, err := e.run(t, "connect", "--context", "c1", "--destination-context", "c1", "--skip-endpoint-check"); !errors.Is(err, mesh.ErrUsage) {
			t.Errorf("same context twice: err = %v", err)
		}
	})

	t.Run("connect-mesh", func(t *testing.T) {
		for _, n := range []string{"c1", "c2", "c3"} {
			listen(t, e.nodeIP[n]+":32379")
		}
		out := e.mustRun(t, "connect", "--context", "c1", "--destination-context", "c2,c3", "--connection-mode", "mesh")
		if !strings.Contains(out, "c1 <-> c2, c1 <-> c3, c2 <-> c3") {
			t.Errorf("output %q", out)
		}
		for n, want := range map[string][]string{"c1": {"c2", "c3"}, "c2": {"c1", "c3"}, "c3": {"c1", "c2"}} {
			if u := e.users(t, n); !equalSlices(u, want) {
				t.Errorf("users of %s: %v, want %v", n, u, want)
			}
			data := e.remotes(t, n)
			for _, r := range want {
				if _, ok := data[r]; !ok {
					t.Errorf("%s has no config for %s", n, r)
				}
			}
		}
		before := e.versions(t)
		e.mustRun(t, "connect", "--context", "c1", "--destination-context", "c2", "--destination-context", "c3", "--connection-mode", "mesh")
		if after := e.versions(t); !equalMaps(before, after) {
			t.Error("second mesh connect wrote objects")
		}
	})

	t.Run("status", func(t *testing.T) {
		publishReports(t, e, false)
		out, _, err := e.run(t, "status", "--context", "c1,c2,c3")
		if !errors.Is(err, mesh.ErrNotReady) {
			t.Fatalf("status of a mesh not ready: err = %v, want ErrNotReady (non-zero exit)", err)
		}
		golden(t, "status-not-ready.txt", out)

		_, _, err = e.run(t, "status", "--context", "c1", "--context", "c2", "--context", "c3", "--wait", "--timeout", "600ms", "--interval", "100ms")
		if !errors.Is(err, mesh.ErrNotReady) || !strings.Contains(err.Error(), "c3: apiserver: no status reported yet") {
			t.Errorf("status --wait: err = %v", err)
		}

		out, _, err = e.run(t, "status", "--context", "c1,c2,c3", "-o", "json")
		if !errors.Is(err, mesh.ErrNotReady) {
			t.Fatalf("status -o json: err = %v, want ErrNotReady", err)
		}
		var st mesh.MeshStatus
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&st); err != nil {
			t.Fatalf("decode %s: %v", out, err)
		}
		if st.Version != mesh.StatusSchemaVersion || st.Ready || len(st.Clusters) != 3 || !strings.HasPrefix(st.Verdict, "Mesh NOT ready") {
			t.Fatalf("status %+v", st)
		}
		c2 := st.Clusters[1]
		if c2.Context != "c2" || c2.Cluster != "c2" || c2.ClusterID != 2 || !equalSlices(c2.Remotes, []string{"c1", "c3"}) ||
			c2.APIServer == nil || !c2.APIServer.Ready || len(c2.Agents) != 1 || c2.Ready {
			t.Errorf("c2 = %+v", c2)
		}
		r := c2.Agents[0].Remotes[1]
		if r.Name != "c3" || r.Connected || r.LastError == "" || r.Reconnects != 3 {
			t.Errorf("c2's view of c3 = %+v", r)
		}
		var raw map[string]any
		_ = json.Unmarshal([]byte(out), &raw)
		for _, k := range []string{"version", "ready", "verdict", "clusters"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("JSON lacks %q", k)
			}
		}

		// Everything becomes ready while status --wait polls.
		go func() {
			time.Sleep(300 * time.Millisecond)
			publishReports(t, e, true)
		}()
		out, _, err = e.run(t, "status", "--context", "c1,c2,c3", "--wait", "--timeout", "30s", "--interval", "100ms")
		if err != nil {
			t.Fatalf("status --wait: %v\n%s", err, out)
		}
		golden(t, "status-ready.txt", out)
	})

	t.Run("status-tells-unreachable-from-not-enabled", func(t *testing.T) {
		cfg, err := clientcmd.LoadFromFile(e.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		gone := clientcmdapi.NewCluster()
		gone.Server = "https://127.0.0.1:1" // nothing listens there
		cfg.Clusters["gone"] = gone
		cfg.Contexts["gone"] = &clientcmdapi.Context{Cluster: "gone", AuthInfo: cfg.Contexts["c1"].AuthInfo}
		path := filepath.Join(t.TempDir(), "kubeconfig")
		if err := clientcmd.WriteToFile(*cfg, path); err != nil {
			t.Fatal(err)
		}
		var out, errb strings.Builder
		root := NewRootCommand(Config{Stdout: &out, Stderr: &errb, Log: discard()})
		root.SetArgs([]string{"--kubeconfig", path, "status", "--context", "c1,gone", "-n", "not-installed-here", "-o", "json"})
		if err := root.ExecuteContext(ctx); !errors.Is(err, mesh.ErrNotReady) {
			t.Fatalf("status: err = %v, want ErrNotReady", err)
		}
		var st mesh.MeshStatus
		if err := json.Unmarshal([]byte(out.String()), &st); err != nil || len(st.Clusters) != 2 {
			t.Fatalf("status %s: %v", out.String(), err)
		}
		for _, tc := range []struct {
			name            string
			c               mesh.ClusterStatus
			wantUnreachable bool
			wantProblem     string
		}{
			{"not enabled", st.Clusters[0], false, mesh.ErrNotEnabled.Error()},
			{"cannot reach", st.Clusters[1], true, mesh.ErrUnreachable.Error()},
		} {
			if tc.c.Unreachable != tc.wantUnreachable || tc.c.Enabled || len(tc.c.Problems) == 0 || !strings.Contains(tc.c.Problems[0], tc.wantProblem) {
				t.Errorf("%s: %+v, want unreachable=%v and a problem with %q", tc.name, tc.c, tc.wantUnreachable, tc.wantProblem)
			}
		}
	})

	t.Run("status-with-kubeconfig-list", func(t *testing.T) {
		t.Setenv("KUBECONFIG", e.cps["c1"].Kubeconfig()+":"+e.cps["c2"].Kubeconfig())
		var out, errb strings.Builder
		root := NewRootCommand(Config{Stdout: &out, Stderr: &errb, Log: discard()})
		root.SetArgs([]string{"status", "--context", "c2,c1", "-o", "json"})
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("%v\n%s", err, errb.String())
		}
		var st mesh.MeshStatus
		if err := json.Unmarshal([]byte(out.String()), &st); err != nil || len(st.Clusters) != 2 || st.Clusters[0].Cluster != "c2" {
			t.Fatalf("status %+v %v", st, err)
		}
	})

	t.Run("disconnect", func(t *testing.T) {
		out := e.mustRun(t, "disconnect", "--context", "c1", "--destination-context", "c2")
		if !strings.Contains(out, "disconnected: c1 <-> c2") {
			t.Errorf("output %q", out)
		}
		for n, want := range map[string][]string{"c1": {"c3"}, "c2": {"c3"}, "c3": {"c1", "c2"}} {
			if u := e.users(t, n); !equalSlices(u, want) {
				t.Errorf("users of %s: %v, want %v", n, u, want)
			}
		}
		d1, d2 := e.remotes(t, "c1"), e.remotes(t, "c2")
		for _, k := range []string{"c2", "c2.etcd-client-ca.crt", "c2.etcd-client.crt", "c2.etcd-client.key"} {
			if _, ok := d1[k]; ok {
				t.Errorf("c1 still has %s", k)
			}
		}
		if _, ok := d2["c1"]; ok {
			t.Error("c2 still has c1")
		}
		if _, ok := d1["c3"]; !ok {
			t.Error("c1 lost c3")
		}
		before := e.versions(t)
		out = e.mustRun(t, "disconnect", "--context", "c1", "--destination-context", "c2")
		if !strings.Contains(out, "nothing changed") {
			t.Errorf("output %q", out)
		}
		if after := e.versions(t); !equalMaps(before, after) {
			t.Error("second disconnect wrote objects")
		}
	})

	t.Run("disable", func(t *testing.T) {
		out := e.mustRun(t, "disable", "--context", "c3")
		if !strings.Contains(out, "release uninstalled") || !strings.Contains(out, "secret/clustermesh-ca") {
			t.Errorf("output %q", out)
		}
		c3 := e.client("c3")
		secrets, err := c3.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cms, err := c3.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, s := range secrets.Items {
			left = append(left, "secret/"+s.Name)
		}
		for _, cm := range cms.Items {
			if cm.Name != "kube-root-ca.crt" { // the namespace's own
				left = append(left, "configmap/"+cm.Name)
			}
		}
		if len(left) != 0 {
			t.Errorf("left in %s after disable: %v", ns, left)
		}
		if _, err := c3.AppsV1().DaemonSets(ns).Get(ctx, "clustermesh-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("agent DaemonSet after disable: err = %v, want not found", err)
		}
		out, _, err = e.run(t, "status", "--context", "c3")
		if !errors.Is(err, mesh.ErrNotReady) || !strings.Contains(out, "not enabled") {
			t.Errorf("status after disable: err = %v, output %q", err, out)
		}
		if _, _, err := e.run(t, "disable", "--context", "c3"); !errors.Is(err, mesh.ErrNotEnabled) {
			t.Errorf("second disable: err = %v, want ErrNotEnabled", err)
		}
	})
}

// publishReports publishes apiserver and agent reports as the components
// would: with ready=false, c2's agent cannot reach c3 and c3 reports nothing.
func publishReports(t *testing.T, e *env, ready bool) {
	ctx := context.Background()
	synced := map[string]bool{meshstatus.KindNodes: true, meshstatus.KindServices: true, meshstatus.KindIdentities: true, meshstatus.KindIPCache: true}
	entries := func(n int) map[string]int {
		return map[string]int{meshstatus.KindNodes: n, meshstatus.KindServices: 2 * n, meshstatus.KindIdentities: 3 * n, meshstatus.KindIPCache: 10 * n}
	}
	ok := func(name string, id uint32, n int) meshstatus.Remote {
		return meshstatus.Remote{Name: name, ClusterID: id, Connected: true, Ready: true, Synced: synced, Entries: entries(n)}
	}
	reports := map[string][]meshstatus.Report{
		"c1": {
			&meshstatus.APIServerReport{Cluster: "c1", ClusterID: 1, Ready: true, Synced: synced, Entries: entries(1), Identities: 12},
			&meshstatus.AgentReport{Cluster: "c1", Node: "node-c1", Remotes: []meshstatus.Remote{ok("c2", 2, 1), ok("c3", 3, 1)}},
		},
		"c2": {
			&meshstatus.APIServerReport{Cluster: "c2", ClusterID: 2, Ready: true, Synced: synced, Entries: entries(1), Identities: 7},
			&meshstatus.AgentReport{Cluster: "c2", Node: "node-c2", Remotes: []meshstatus.Remote{ok("c1", 1, 1), {
				Name: "c3", ClusterID: 3, Synced: map[string]bool{meshstatus.KindNodes: true}, Entries: map[string]int{meshstatus.KindNodes: 1, meshstatus.KindIPCache: 4},
				Reconnects: 3, LastError: "dial tcp 127.0.0.31:32379: connect: connection refused",
			}}},
		},
	}
	if ready {
		reports["c2"][1] = &meshstatus.AgentReport{Cluster: "c2", Node: "node-c2", Remotes: []meshstatus.Remote{ok("c1", 1, 1), ok("c3", 3, 1)}}
		reports["c3"] = []meshstatus.Report{
			&meshstatus.APIServerReport{Cluster: "c3", ClusterID: 3, Ready: true, Synced: synced, Entries: entries(1), Identities: 5},
			&meshstatus.AgentReport{Cluster: "c3", Node: "node-c3", Remotes: []meshstatus.Remote{ok("c1", 1, 1), ok("c2", 2, 1)}},
		}
	}
	for n, rs := range reports {
		for _, r := range rs {
			if err := meshstatus.Publish(ctx, e.client(n).CoreV1(), ns, r); err != nil {
				t.Error(err)
			}
		}
	}
}

func fakeInfo(t *testing.T, e *env, cluster, namespace, name, id, maxc string) {
	t.Helper()
	ctx := context.Background()
	c := e.client(cluster)
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "clustermesh-config", Namespace: namespace},
		Data:       map[string]string{"cluster-name": name, "cluster-id": id, "max-connected-clusters": maxc},
	}
	if _, err := c.CoreV1().ConfigMaps(namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, e *env, context, namespace string) *mesh.Cluster {
	t.Helper()
	c, err := mesh.Open(mesh.Target{Kubeconfig: e.kubeconfig, Context: context, Namespace: namespace})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func secretCert(t *testing.T, e *env, cluster, secret, key string) *x509.Certificate {
	t.Helper()
	s, err := e.client(cluster).CoreV1().Secrets(ns).Get(context.Background(), secret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return parsePEM(t, s.Data[key])
}

func parsePEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("no PEM in %q", data)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func equalSlices(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
