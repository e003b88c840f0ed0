package server

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/statusreport"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/internal/runner"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestStatusReport runs the server with its status publisher against the
// shared kube-apiserver: the status ConfigMap appears, says ready with the
// counts of what the cluster holds, follows a change, and comes back when
// deleted.
func TestStatusReport(t *testing.T) {
	cp := controlPlane(t)
	cs := cp.Client
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns, statusNS = "status", "status-reports"
	for _, n := range []string{ns, statusNS} {
		if err := kubetest.EnsureNamespace(ctx, cs, n); err != nil {
			t.Fatal(err)
		}
	}
	zero := int64(0)
	del := metav1.DeleteOptions{GracePeriodSeconds: &zero}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = cs.CoreV1().Pods(ns).DeleteCollection(ctx, del, metav1.ListOptions{})
		_ = cs.CoreV1().Nodes().Delete(ctx, "status-n1", del)
		_ = cs.CoreV1().ConfigMaps(statusNS).DeleteCollection(ctx, del, metav1.ListOptions{})
	})
	if _, err := kubetest.CreateNode(ctx, cs, kubetest.NodeSpec{Name: "status-n1", InternalIP: "10.77.0.1", PodCIDRs: []string{"10.77.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	pod := func(name, app, ip string) {
		t.Helper()
		if _, err := kubetest.CreateRunningPod(ctx, cs, kubetest.PodSpec{
			Namespace: ns, Name: name, NodeName: "status-n1", HostIP: "10.77.0.1", Labels: map[string]string{"app": app}, IPs: []string{ip},
		}); err != nil {
			t.Fatal(err)
		}
	}
	pod("p1", "web", "10.77.1.1")
	pod("p2", "web", "10.77.1.2")

	etcd := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	kv, err := kvstore.New(ctx, etcd.AdminConfig(), etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	cfg := DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = "c1", 7
	cfg.StatusNamespace = statusNS
	log := etcdserver.TestLogger()
	s, err := New(ctx, cfg, Deps{
		KV: kv, Kube: cs, NewStore: SyncStoreFactory(kv, log, nil), Clock: clock.RealClock{},
		Registry: prometheus.NewRegistry(), Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := statusreport.New(statusreport.Config{Namespace: statusNS, Interval: time.Second, Poll: 100 * time.Millisecond},
		cs.CoreV1(), s.Report, clock.RealClock{}, log)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- runner.All(runCtx, runner.Part{Name: "server", Run: s.Run}, runner.Part{Name: "status", Run: pub.Run})
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	report := func() (meshstatus.APIServerReport, error) {
		rs, err := meshstatus.List(ctx, cs.CoreV1(), statusNS)
		if err != nil {
			return meshstatus.APIServerReport{}, err
		}
		if len(rs.APIServers) != 1 || len(rs.Invalid) != 0 {
			return meshstatus.APIServerReport{}, fmt.Errorf("reports %+v", rs)
		}
		return rs.APIServers[0], nil
	}
	want := func(entries map[string]int, ids int) func() error {
		return func() error {
			r, err := report()
			if err != nil {
				return err
			}
			allSynced := map[string]bool{
				meshstatus.KindNodes: true, meshstatus.KindIPCache: true, meshstatus.KindServices: true, meshstatus.KindIdentities: true,
			}
			if r.Cluster != "c1" || r.ClusterID != 7 || !r.Ready || r.Version != meshstatus.SchemaVersion ||
				!maps.Equal(r.Synced, allSynced) || !maps.Equal(r.Entries, entries) || r.Identities != ids || r.LastError != "" {
				return fmt.Errorf("report %+v", r)
			}
			return nil
		}
	}
	waitReport := func(what string, check func() error) {
		t.Helper()
		var err error
		deadline := time.Now().Add(60 * time.Second)
		for err = check(); err != nil; err = check() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// One node, two pod IPs, one identity (both pods share their labels).
	waitReport("initial report", want(map[string]int{"nodes": 1, "ip": 2, "services": 0, "identities": 1}, 1))

	pod("p3", "db", "10.77.1.3")
	waitReport("report after a new pod", want(map[string]int{"nodes": 1, "ip": 3, "services": 0, "identities": 2}, 2))

	if err := cs.CoreV1().ConfigMaps(statusNS).Delete(ctx, "clustermesh-status-apiserver", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReport("report after its ConfigMap was deleted", want(map[string]int{"nodes": 1, "ip": 3, "services": 0, "identities": 2}, 2))
}
