package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata")

const ns = mesh.DefaultNamespace

// env is a set of real control planes and one kubeconfig naming them.
type env struct {
	kubeconfig string
	cps        map[string]*kubetest.ControlPlane
	// nodeIP is the InternalIP of each cluster's single node.
	nodeIP map[string]string
}

func (e *env) client(name string) kubernetes.Interface { return e.cps[name].Client }

// startClusters starts one control plane per name concurrently, creates a
// ready node in each and writes a merged kubeconfig with one context per
// cluster.
func startClusters(t *testing.T, names ...string) *env {
	t.Helper()
	bin := testenv.KubeBinDir(t)
	e := &env{cps: map[string]*kubetest.ControlPlane{}, nodeIP: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cp, err := kubetest.Start(context.Background(), kubetest.Config{Name: n, BinDir: bin, Dir: t.TempDir()}, slog.New(slog.DiscardHandler))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			e.cps[n] = cp
		}()
	}
	wg.Wait()
	for _, cp := range e.cps {
		t.Cleanup(cp.Stop)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	merged := clientcmdapi.NewConfig()
	for i, n := range names {
		cfg, err := clientcmd.LoadFromFile(e.cps[n].Kubeconfig())
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range cfg.Clusters {
			merged.Clusters[k] = v
		}
		for k, v := range cfg.AuthInfos {
			merged.AuthInfos[k] = v
		}
		for k, v := range cfg.Contexts {
			merged.Contexts[k] = v
		}
		e.nodeIP[n] = "127.0.0." + string(rune('1'+i)) + "1"
		_, err = kubetest.CreateNode(context.Background(), e.cps[n].Client, kubetest.NodeSpec{Name: "node-" + n, InternalIP: e.nodeIP[n]})
		if err != nil {
			t.Fatal(err)
		}
	}
	merged.CurrentContext = names[0]
	e.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*merged, e.kubeconfig); err != nil {
		t.Fatal(err)
	}
	return e
}

// run executes the CLI with args and the merged kubeconfig.
func (e *env) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	log := slog.New(slog.NewTextHandler(&errb, nil))
	root := NewRootCommand(Config{Stdout: &out, Stderr: &errb, Log: log})
	root.SetArgs(append([]string{"--kubeconfig", e.kubeconfig}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func (e *env) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := e.run(t, args...)
	if err != nil {
		t.Fatalf("clustermesh %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// versions returns the resourceVersion of every Secret and ConfigMap of the
// release namespace in every cluster.
func (e *env) versions(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for n, cp := range e.cps {
		ss, err := cp.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss.Items {
			out[n+"/secret/"+s.Name] = s.ResourceVersion
		}
		cms, err := cp.Client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, cm := range cms.Items {
			out[n+"/configmap/"+cm.Name] = cm.ResourceVersion
		}
	}
	return out
}

func (e *env) users(t *testing.T, cluster string) []string {
	t.Helper()
	clusters, _ := e.usersFile(t, cluster)
	return clusters
}

// usersFile returns the clusters and the legacy clusters of cluster's
// remote users file.
func (e *env) usersFile(t *testing.T, cluster string) (clusters, legacy []string) {
	t.Helper()
	cm, err := e.client(cluster).CoreV1().ConfigMaps(ns).Get(context.Background(), "clustermesh-remote-users", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var u struct {
		Clusters       []string `json:"clusters"`
		LegacyClusters []string `json:"legacyClusters"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["users.yaml"]), &u); err != nil {
		t.Fatal(err)
	}
	return u.Clusters, u.LegacyClusters
}

func (e *env) remotes(t *testing.T, cluster string) map[string][]byte {
	t.Helper()
	s, err := e.client(cluster).CoreV1().Secrets(ns).Get(context.Background(), "clustermesh-remote-clusters", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Data
}

// listen accepts TCP connections on addr until the test ends, standing in
// for a clustermesh-apiserver.
func listen(t *testing.T, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if string(want) != got {
		t.Errorf("output differs from %s (go test -update rewrites it)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
