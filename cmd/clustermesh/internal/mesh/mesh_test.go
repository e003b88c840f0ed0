package mesh

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func TestRemoteState(t *testing.T) {
	for _, tc := range []struct {
		r    meshstatus.Remote
		want string
	}{
		{meshstatus.Remote{Connected: true, Ready: true}, "ready"},
		{meshstatus.Remote{Connected: true}, "syncing"},
		{meshstatus.Remote{Connected: true, WaitingForCanary: true}, "waiting for the sync canary of its emptied or replaced etcd"},
		{meshstatus.Remote{LastError: "dial tcp: refused"}, "disconnected"},
		{meshstatus.Remote{Connected: true, LastError: meshstatus.RefusedPrefix + "cluster ID conflict"}, "refused"},
		{meshstatus.Remote{LastError: meshstatus.RefusedPrefix + "unusable config file"}, "refused"},
	} {
		if got := remoteState(tc.r); got != tc.want {
			t.Errorf("remoteState(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}

func TestCachedState(t *testing.T) {
	for _, tc := range []struct {
		r    meshstatus.CachedRemote
		want string
	}{
		{meshstatus.CachedRemote{Connected: true, Synced: true}, "synced"},
		{meshstatus.CachedRemote{Connected: true}, "syncing"},
		{meshstatus.CachedRemote{Connected: true, Served: true, WaitingForCanary: true}, "waiting for the sync canary of its emptied or replaced etcd, serving the last state"},
		{meshstatus.CachedRemote{Served: true, LastError: "dial tcp: refused"}, "disconnected, serving the last state"},
		{meshstatus.CachedRemote{LastError: "dial tcp: refused"}, "disconnected"},
		{meshstatus.CachedRemote{Connected: true, LastError: meshstatus.RefusedPrefix + "cluster ID conflict"}, "refused"},
	} {
		if got := cachedState(tc.r); got != tc.want {
			t.Errorf("cachedState(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}

func TestCacheProblems(t *testing.T) {
	down := meshstatus.CachedRemote{Name: "c2", Served: true, LastError: "dial tcp: refused"}
	synced := meshstatus.CachedRemote{Name: "c3", Connected: true, Synced: true}
	agents := func(cached bool) []meshstatus.AgentReport {
		return []meshstatus.AgentReport{{Node: "n1", Remotes: []meshstatus.Remote{{Name: "c2", Ready: true, Cached: cached}, {Name: "c3", Ready: true, Cached: cached}}}}
	}
	for _, tc := range []struct {
		name   string
		api    *meshstatus.APIServerReport
		agents []meshstatus.AgentReport
		want   []string
	}{
		{name: "no report", agents: agents(true)},
		{name: "agents read the cache", api: &meshstatus.APIServerReport{KVStoreMesh: []meshstatus.CachedRemote{down, synced}}, agents: agents(true),
			want: []string{"kvstoremesh: remote c2 disconnected, serving the last state (dial tcp: refused)"}},
		{name: "agents in direct mode", api: &meshstatus.APIServerReport{KVStoreMesh: []meshstatus.CachedRemote{down, synced}}, agents: agents(false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cacheProblems(tc.api, tc.agents); !slices.Equal(got, tc.want) {
				t.Fatalf("problems %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPairs(t *testing.T) {
	cl := func(n string) *Cluster { return &Cluster{Target: Target{Context: n}} }
	a, b, c := cl("a"), cl("b"), cl("c")
	cases := []struct {
		name  string
		mode  string
		dests []*Cluster
		want  [][2]int
		err   error
	}{
		{"bidirectional", ModeBidirectional, []*Cluster{b, c}, [][2]int{{0, 1}, {0, 2}}, nil},
		{"default-mode", "", []*Cluster{b}, [][2]int{{0, 1}}, nil},
		{"mesh", ModeMesh, []*Cluster{b, c}, [][2]int{{0, 1}, {0, 2}, {1, 2}}, nil},
		{"no-destination", ModeMesh, nil, nil, ErrUsage},
		{"unknown-mode", "star", []*Cluster{b}, nil, ErrUsage},
		{"duplicate", ModeMesh, []*Cluster{b, cl("a")}, nil, ErrUsage},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pairs(tc.mode, a, tc.dests)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("pairs = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("pairs = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// fakeCluster is a cluster on client-go's fake clientset, enabled as name/id
// with a NodePort service and one node.
func fakeCluster(t *testing.T, name string, id int) *Cluster {
	t.Helper()
	cs := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: configMapConfig, Namespace: DefaultNamespace},
			Data: map[string]string{"cluster-name": name, "cluster-id": itoa(id), "max-connected-clusters": "255"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: serviceAPIServer, Namespace: DefaultNamespace},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{Port: 2379, NodePort: 32379}}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n-" + name}, Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2." + itoa(id)}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}},
	)
	c := &Cluster{Target: Target{Context: name, Namespace: DefaultNamespace}, Client: cs}
	if _, _, err := c.ensureCA(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return c
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestConnectOnFakeClusters(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	a, b := fakeCluster(t, "a", 1), fakeCluster(t, "b", 2)
	res, err := Connect(ctx, a, []*Cluster{b}, ConnectConfig{SkipEndpointCheck: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changed) == 0 {
		t.Fatal("first connect changed nothing")
	}
	s, err := a.Client.CoreV1().Secrets(DefaultNamespace).Get(ctx, secretRemoteClusters, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(s.Data["b"]), "https://192.0.2.2:32379") || s.Annotations[idAnnotationPrefix+"b"] != "2" {
		t.Fatalf("config %q annotations %v", s.Data["b"], s.Annotations)
	}
	res, err = Connect(ctx, a, []*Cluster{b}, ConnectConfig{SkipEndpointCheck: true}, log)
	if err != nil || len(res.Changed) != 0 {
		t.Fatalf("second connect: %v %v", res.Changed, err)
	}
	c := fakeCluster(t, "c", 2)
	if _, err := Connect(ctx, c, []*Cluster{a}, ConnectConfig{SkipEndpointCheck: true}, log); !errors.Is(err, ErrClusterIDConflict) {
		t.Fatalf("ID already used by a remote: err = %v", err)
	}
	res, err = Disconnect(ctx, a, []*Cluster{b}, ModeBidirectional, log)
	if err != nil || len(res.Changed) == 0 {
		t.Fatalf("disconnect: %v %v", res, err)
	}
	res, err = Disconnect(ctx, a, []*Cluster{b}, ModeBidirectional, log)
	if err != nil || len(res.Changed) != 0 {
		t.Fatalf("second disconnect: %v %v", res.Changed, err)
	}
}

func TestLocalReaderUserIsTheApiserverOne(t *testing.T) {
	if localReaderUser != etcdserver.LocalReaderUser {
		t.Fatalf("the CLI issues certificates for %q, the apiserver creates the user %q", localReaderUser, etcdserver.LocalReaderUser)
	}
}

func TestVerdictNamesHowAgentsSeeRemotes(t *testing.T) {
	cluster := func(cached ...bool) ClusterStatus {
		var rs []meshstatus.Remote
		for i, c := range cached {
			rs = append(rs, meshstatus.Remote{Name: "c" + strconv.Itoa(i+2), Ready: true, Cached: c})
		}
		return ClusterStatus{Cluster: "c1", Agents: []meshstatus.AgentReport{{Node: "n1", Remotes: rs}}}
	}
	for _, tc := range []struct {
		name string
		cs   []ClusterStatus
		want string
	}{
		{name: "direct", cs: []ClusterStatus{cluster(false, false)}, want: "Mesh ready: 1 clusters, 1 agents, 2 remote connections ready."},
		{name: "kvstoremesh", cs: []ClusterStatus{cluster(true, true)}, want: "Mesh ready: 1 clusters, 1 agents, 2 remote cluster views ready, read from the kvstoremesh cache."},
		{name: "mixed", cs: []ClusterStatus{cluster(true, false)}, want: "Mesh ready: 1 clusters, 1 agents, 2 remote cluster views ready (1 over direct connections, 1 from the kvstoremesh cache)."},
		{name: "problem", cs: []ClusterStatus{{Cluster: "c1", Problems: []string{"agent n1: remote c2 syncing"}}}, want: "Mesh NOT ready: c1: agent n1: remote c2 syncing."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, got := verdict(tc.cs)
			if got != tc.want || ok != (tc.name != "problem") {
				t.Fatalf("verdict = %v, %q; want %q", ok, got, tc.want)
			}
		})
	}
}
