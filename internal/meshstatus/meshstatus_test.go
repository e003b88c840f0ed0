package meshstatus

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestPublishListRoundTrip(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	at := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	agent := &AgentReport{Cluster: "c1", Node: "node-b", Remotes: []Remote{
		{Name: "c3", ClusterID: 3, Connected: false, LastError: "dial tcp: refused", Reconnects: 4},
		{Name: "c2", ClusterID: 2, Connected: true, Ready: true, Synced: map[string]bool{KindNodes: true}, Entries: map[string]int{KindNodes: 2}, LastChange: at},
	}}
	api := &APIServerReport{Cluster: "c1", ClusterID: 1, Ready: true, Identities: 7}
	for _, r := range []Report{agent, api, &AgentReport{Cluster: "c1", Node: "node-a"}} {
		if err := Publish(ctx, cs.CoreV1(), "kube-system", r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := List(ctx, cs.CoreV1(), "kube-system")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Agents) != 2 || got.Agents[0].Node != "node-a" || got.Agents[1].Node != "node-b" {
		t.Fatalf("agents = %+v", got.Agents)
	}
	b := got.Agents[1]
	if b.Version != SchemaVersion || b.Remotes[0].Name != "c2" || !b.Remotes[0].LastChange.Equal(at) || b.Remotes[1].Reconnects != 4 {
		t.Fatalf("agent report = %+v", b)
	}
	if b.RemoteReady() || !got.Agents[0].RemoteReady() {
		t.Fatal("RemoteReady wrong")
	}
	if len(got.APIServers) != 1 || got.APIServers[0].Identities != 7 || !got.APIServers[0].Ready {
		t.Fatalf("apiservers = %+v", got.APIServers)
	}
	cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "clustermesh-status-agent-node-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Labels[LabelPartOf] != PartOf || cm.Labels[LabelComponent] != ComponentAgent {
		t.Fatalf("labels = %v", cm.Labels)
	}
}

func TestPublishSkipsUnchanged(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	r := &APIServerReport{Cluster: "c1", ClusterID: 1}
	if err := Publish(ctx, cs.CoreV1(), "ns", r); err != nil {
		t.Fatal(err)
	}
	before := len(cs.Actions())
	if err := Publish(ctx, cs.CoreV1(), "ns", &APIServerReport{Cluster: "c1", ClusterID: 1}); err != nil {
		t.Fatal(err)
	}
	for _, a := range cs.Actions()[before:] {
		if a.GetVerb() != "get" {
			t.Fatalf("unchanged report caused %s", a.GetVerb())
		}
	}
	r.Ready = true
	if err := Publish(ctx, cs.CoreV1(), "ns", r); err != nil {
		t.Fatal(err)
	}
	got, _ := List(ctx, cs.CoreV1(), "ns")
	if !got.APIServers[0].Ready {
		t.Fatal("update not written")
	}
	if err := Delete(ctx, cs.CoreV1(), "ns", r); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, cs.CoreV1(), "ns", r); err != nil {
		t.Fatal(err)
	}
}

func TestListReportsInvalid(t *testing.T) {
	ctx := context.Background()
	mk := func(name, comp, data string) *corev1.ConfigMap {
		return &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{LabelPartOf: PartOf, LabelComponent: comp}},
			Data:       map[string]string{DataKey: data},
		}
	}
	cs := fake.NewClientset(
		mk("clustermesh-status-agent-x", ComponentAgent, "{not json"),
		mk("clustermesh-status-agent-y", ComponentAgent, `{"version":99,"node":"y"}`),
		mk("clustermesh-status-agent-z", ComponentAgent, `{"version":1,"node":"z","remotes":[]}`),
		mk("clustermesh-status-other", "sidecar", `{}`),
	)
	got, err := List(ctx, cs.CoreV1(), "ns")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Agents) != 1 || got.Agents[0].Node != "z" {
		t.Fatalf("agents = %+v", got.Agents)
	}
	if len(got.Invalid) != 3 || !strings.Contains(got.Invalid[1], "newer") {
		t.Fatalf("invalid = %q", got.Invalid)
	}
}

func TestObjectNameBounded(t *testing.T) {
	long := strings.Repeat("n", 300)
	a, b := ObjectName(&AgentReport{Node: long}), ObjectName(&AgentReport{Node: long + "x"})
	if len(a) > maxNameLen || a == b {
		t.Fatalf("names %d %q %q", len(a), a, b)
	}
	if ObjectName(&APIServerReport{}) != "clustermesh-status-apiserver" {
		t.Fatal(ObjectName(&APIServerReport{}))
	}
}
