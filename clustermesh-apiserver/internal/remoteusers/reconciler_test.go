package remoteusers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   string
		want   []string // nil with bad: error
		legacy []string
		bad    bool
	}{
		{"list", "clusters: [c3, c2, c3]\n", []string{"c2", "c3"}, nil, false},
		{"block list", "clusters:\n- c2\n", []string{"c2"}, nil, false},
		{"empty list", "clusters: []\n", []string{}, nil, false},
		{"empty file", "", []string{}, nil, false},
		{"legacy clusters", "clusters: [c2]\nlegacyClusters: [c4, c3, c4]\n", []string{"c2"}, []string{"c3", "c4"}, false},
		{"legacy only", "legacyClusters: [c3]\n", nil, []string{"c3"}, false},
		{"in both lists", "clusters: [c2]\nlegacyClusters: [c2]\n", nil, nil, true},
		{"own cluster as legacy", "legacyClusters: [c1]\n", nil, nil, true},
		{"bad legacy name", "legacyClusters: [C_3]\n", nil, nil, true},
		{"bad name", "clusters: [C_2]\n", nil, nil, true},
		{"own cluster", "clusters: [c1]\n", nil, nil, true},
		{"unknown field", "cluster: [c2]\n", nil, nil, true},
		{"not a list", "clusters: c2\n", nil, nil, true},
		{"not yaml", "clusters: [c2\n", nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.data), "c1")
			if tc.bad {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Parse: %v, %v; want ErrMalformed", got, err)
				}
				return
			}
			if err != nil || !slices.Equal(got.Clusters, tc.want) && len(got.Clusters)+len(tc.want) > 0 ||
				!slices.Equal(got.Legacy, tc.legacy) && len(got.Legacy)+len(tc.legacy) > 0 {
				t.Fatalf("Parse = %+v, %v; want %v and legacy %v", got, err, tc.want, tc.legacy)
			}
		})
	}
}

// configMapDir imitates a Kubernetes ConfigMap volume: the file is a
// symlink through ..data, which each update swaps atomically.
type configMapDir struct {
	t   *testing.T
	dir string
	gen int
}

func newConfigMapDir(t *testing.T, content string) *configMapDir {
	d := &configMapDir{t: t, dir: t.TempDir()}
	d.write(content)
	if err := os.Symlink(filepath.Join("..data", "users.yaml"), filepath.Join(d.dir, "users.yaml")); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *configMapDir) file() string { return filepath.Join(d.dir, "users.yaml") }

func (d *configMapDir) write(content string) {
	d.gen++
	ts := fmt.Sprintf("..gen_%d", d.gen)
	if err := os.Mkdir(filepath.Join(d.dir, ts), 0o755); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, ts, "users.yaml"), []byte(content), 0o644); err != nil {
		d.t.Fatal(err)
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		d.t.Fatal(err)
	}
	if d.gen > 1 {
		os.RemoveAll(filepath.Join(d.dir, fmt.Sprintf("..gen_%d", d.gen-1)))
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, 30*time.Second, what, func() (bool, string) { return cond(), "" })
}

// TestFileChanges edits a ConfigMap-like users file under a running
// reconciler on a real embedded etcd: a cluster added to the file gets a
// user that can read cilium/state/ and cannot write; a malformed file is
// reported and changes nothing; a cluster removed from the file loses its
// user and new requests with its certificate are denied.
func TestFileChanges(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := kvstore.New(ctx, srv.AdminConfig(), etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Etcd().Put(ctx, "cilium/state/nodes/v1/c1/n1", "{}"); err != nil {
		t.Fatal(err)
	}

	cm := newConfigMapDir(t, "clusters: []\n")
	var (
		mu      sync.Mutex
		configs = map[string]kvstore.Config{}
	)
	reg := prometheus.NewRegistry()
	r, err := New(Config{
		Cluster: "c1", File: cm.file(), Static: []string{"c9"}, Resync: time.Hour,
		OnEnsure: func(c string, rc kvstore.Config) error {
			mu.Lock()
			defer mu.Unlock()
			configs[c] = rc
			return nil
		},
	}, srv, clock.RealClock{}, etcdserver.TestLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	users := func(want ...string) func() bool {
		return func() bool {
			got, err := srv.RemoteUsers(ctx)
			slices.Sort(got)
			return err == nil && slices.Equal(got, want)
		}
	}
	eventually(t, "the static user c9 alone", users("c9"))

	cm.write("clusters: [c2, c9]\n")
	eventually(t, "users c2 and c9", users("c2", "c9"))
	var rc kvstore.Config
	eventually(t, "the client config of c2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		var ok bool
		rc, ok = configs["c2"]
		return ok
	})
	remote, err := kvstore.New(ctx, rc, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	if resp, err := remote.Etcd().Get(ctx, "cilium/state/", clientv3WithPrefix()...); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("remote read of cilium/state/: %v, %v", resp, err)
	}
	if _, err := remote.Etcd().Put(ctx, "cilium/state/nodes/v1/c1/n2", "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("remote write: %v, want permission denied", err)
	}

	cm.write("clusters: [c2, Not_A_Cluster]\n")
	eventually(t, "the malformed file reported", func() bool { return errors.Is(r.LastError(), ErrMalformed) })
	if got := value(t, r.errors.WithLabelValues("file")); got < 1 {
		t.Errorf("file errors metric %v", got)
	}
	if ok := users("c2", "c9")(); !ok {
		t.Fatal("a malformed file changed the users")
	}

	cm.write("clusters: []\n")
	eventually(t, "c2 removed, static c9 kept", users("c9"))
	// The pass that removed c2 ends after the removal: wait for its report.
	eventually(t, "a clean pass", func() bool {
		return r.LastError() == nil && slices.Equal(r.Current(), []string{"c9"}) && value(t, r.usersGauge) == 1
	})
	if _, err := remote.Etcd().Get(ctx, "cilium/state/nodes/v1/c1/n1"); err == nil {
		t.Fatal("the removed user can still read")
	}
}

// TestRescan applies a file written where no watch sees it (its directory
// did not exist when Run started) on the periodic rescan.
func TestRescan(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	file := filepath.Join(t.TempDir(), "later", "users.yaml")
	r, err := New(Config{Cluster: "c1", File: file, Resync: 200 * time.Millisecond}, srv, clock.RealClock{}, etcdserver.TestLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() { stop(); <-done }()
	eventually(t, "the missing file reported", func() bool { return r.LastError() != nil })
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("clusters: [c3]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "user c3", func() bool {
		got, err := srv.RemoteUsers(ctx)
		return err == nil && strings.Join(got, ",") == "c3"
	})
}

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// TestLegacyClusters moves a cluster between Cilium's two auth modes: the
// shared user "remote" exists while some cluster is legacy, each legacy
// cluster gets its client config (CN=remote) and loses it when it leaves,
// and a cluster moving to its own user keeps the config of that user.
func TestLegacyClusters(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cm := newConfigMapDir(t, "legacyClusters: [c2, c3]\n")
	var (
		mu      sync.Mutex
		configs = map[string]kvstore.Config{}
	)
	r, err := New(Config{
		Cluster: "c1", File: cm.file(), Resync: time.Hour,
		OnEnsure: func(c string, rc kvstore.Config) error {
			mu.Lock()
			defer mu.Unlock()
			configs[c] = rc
			return nil
		},
		OnRemove: func(c string) error {
			mu.Lock()
			defer mu.Unlock()
			delete(configs, c)
			return nil
		},
	}, srv, clock.RealClock{}, etcdserver.TestLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	state := func() (legacy bool, users []string, cfgs map[string]string) {
		has, err := srv.HasLegacyRemoteUser(ctx)
		if err != nil {
			t.Fatal(err)
		}
		users, err = srv.RemoteUsers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(users)
		mu.Lock()
		defer mu.Unlock()
		cfgs = map[string]string{}
		for c, rc := range configs {
			cfgs[c] = filepath.Base(rc.CertFile)
		}
		return has, users, cfgs
	}
	for _, step := range []struct {
		name       string
		file       string
		wantLegacy bool
		wantUsers  []string
		wantCfgs   map[string]string // cluster -> certificate file
	}{
		{"two legacy clusters", "legacyClusters: [c2, c3]\n", true, nil, map[string]string{"c2": "remote.crt", "c3": "remote.crt"}},
		{"c2 moves to its own user", "clusters: [c2]\nlegacyClusters: [c3]\n", true, []string{"c2"}, map[string]string{"c2": "remote-c2.crt", "c3": "remote.crt"}},
		{"c2 back to legacy", "legacyClusters: [c2, c3]\n", true, nil, map[string]string{"c2": "remote.crt", "c3": "remote.crt"}},
		{"c3 leaves", "legacyClusters: [c2]\n", true, nil, map[string]string{"c2": "remote.crt"}},
		{"no legacy cluster left", "clusters: []\n", false, nil, map[string]string{}},
	} {
		cm.write(step.file)
		if err := r.Reconcile(ctx); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		legacy, users, cfgs := state()
		if legacy != step.wantLegacy || !slices.Equal(users, step.wantUsers) && len(users)+len(step.wantUsers) > 0 || fmt.Sprint(cfgs) != fmt.Sprint(step.wantCfgs) {
			t.Fatalf("%s: legacy user %v, users %v, configs %v; want %v, %v, %v", step.name, legacy, users, cfgs, step.wantLegacy, step.wantUsers, step.wantCfgs)
		}
	}
}
