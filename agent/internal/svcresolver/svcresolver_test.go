package svcresolver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/agent/internal/svcresolver"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func TestServiceName(t *testing.T) {
	for _, tc := range []struct {
		name, host, ns, svc string
		ok                  bool
	}{
		{name: "svc", host: "clustermesh-apiserver.kube-system.svc", ns: "kube-system", svc: "clustermesh-apiserver", ok: true},
		{name: "cluster domain", host: "clustermesh-apiserver.kube-system.svc.cluster.local", ns: "kube-system", svc: "clustermesh-apiserver", ok: true},
		{name: "fully qualified", host: "etcd.mesh.svc.cluster.local.", ns: "mesh", svc: "etcd", ok: true},
		{name: "name and namespace only", host: "clustermesh-apiserver.kube-system"},
		{name: "other domain", host: "etcd.example.com"},
		{name: "ipv4", host: "10.96.0.10"},
		{name: "ipv6", host: "fd00::10"},
		{name: "localhost", host: "localhost"},
		{name: "invalid service name", host: "Etcd_1.mesh.svc"},
		{name: "invalid namespace", host: "etcd.Mesh_1.svc"},
		{name: "svc not third label", host: "etcd.svc.mesh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, svc, ok := svcresolver.ServiceName(tc.host)
			if ok != tc.ok || ns != tc.ns || svc != tc.svc {
				t.Fatalf("ServiceName(%q) = %q, %q, %v; want %q, %q, %v", tc.host, ns, svc, ok, tc.ns, tc.svc, tc.ok)
			}
		})
	}
}

// The ClusterIPs of this test are loopback addresses: the kube-apiserver
// allocates them from a 127.100.0.0/24 service range, and the embedded
// etcds listen on them, so the address the apiserver hands out is really
// what the client dials, without kube-proxy.
const (
	serviceCIDR = "127.100.0.0/24"
	etcdIP      = "127.100.0.10" // Service "etcd": certificate names the Service (as `clustermesh enable` issues it)
	otherIP     = "127.100.0.11" // Service "other": certificate names its IP only
	ns          = "mesh"
)

// TestDialServiceName connects kvstore clients configured with Service
// DNS names, which the host's resolver cannot resolve, to embedded etcds
// through a real kube-apiserver. It shows: the name resolves to the
// Service's ClusterIP and the client works there; the same config without
// the resolver fails (so it is the resolver that connects); the server
// certificate is still verified for the Service name (a certificate
// valid for the ClusterIP but not the name is refused); a missing Service
// and a headless one fail with errors that say so.
func TestDialServiceName(t *testing.T) {
	cp := kubetest.StartForTest(t, kubetest.Config{ServiceCIDR: serviceCIDR})
	kcfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	kube := kubernetes.NewForConfigOrDie(kcfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kubetest.EnsureNamespace(ctx, kube, ns); err != nil {
		t.Fatal(err)
	}

	etcdName := "etcd." + ns + ".svc"
	withName := etcdserver.StartTest(t, etcdserver.Config{ClientURL: "https://" + etcdIP + ":0", Hosts: []string{etcdName, etcdName + ".cluster.local"}})
	withoutName := etcdserver.StartTest(t, etcdserver.Config{ClientURL: "https://" + otherIP + ":0"})
	createService(ctx, t, kube, "etcd", etcdIP)
	createService(ctx, t, kube, "other", otherIP)
	createService(ctx, t, kube, "headless", corev1.ClusterIPNone)

	// observe records what the resolver's dialer was asked and what it
	// dialled.
	res := svcresolver.New(kube.CoreV1())
	var mu sync.Mutex
	var dialled []string
	observe := func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := res.Dial(ctx, addr)
		if err == nil {
			mu.Lock()
			dialled = append(dialled, addr+" -> "+conn.RemoteAddr().String())
			mu.Unlock()
		}
		return conn, err
	}

	for _, tc := range []struct {
		name    string
		server  *etcdserver.Server
		host    string
		dial    kvstore.Dialer
		wantErr error // nil: connects and serves a put and a get
		wantIP  string
	}{
		{name: "service name", server: withName, host: etcdName, dial: observe, wantIP: etcdIP},
		{name: "service name with cluster domain", server: withName, host: etcdName + ".cluster.local", dial: observe, wantIP: etcdIP},
		{name: "without resolver", server: withName, host: etcdName, wantErr: kvstore.ErrUnreachable},
		{name: "certificate not valid for the name", server: withoutName, host: "other." + ns + ".svc", dial: observe, wantErr: kvstore.ErrServerCertUntrusted},
		{name: "service not found", server: withName, host: "missing." + ns + ".svc", dial: observe, wantErr: svcresolver.ErrServiceNotFound},
		{name: "headless service", server: withName, host: "headless." + ns + ".svc", dial: observe, wantErr: svcresolver.ErrNoClusterIP},
		{name: "ip endpoint unchanged", server: withName, host: etcdIP, dial: observe, wantIP: etcdIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			dialled = nil
			mu.Unlock()
			cfg := tc.server.AdminConfig()
			u, err := url.Parse(cfg.Endpoints[0])
			if err != nil {
				t.Fatal(err)
			}
			port := u.Port()
			cfg.Endpoints = []string{"https://" + net.JoinHostPort(tc.host, port)}
			cfg.Dial = tc.dial
			cfg.DialTimeout = kvstore.Duration(3 * time.Second)
			c, err := kvstore.New(ctx, cfg, etcdserver.TestLogger())
			if tc.wantErr != nil {
				if c != nil {
					c.Close()
				}
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("New: %v, want %v", err, tc.wantErr)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer c.Close()
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			defer rcancel()
			if _, err := c.Etcd().Put(rctx, "svcresolver/"+tc.name, "v"); err != nil {
				t.Fatalf("put: %v", err)
			}
			got, err := c.Etcd().Get(rctx, "svcresolver/"+tc.name)
			if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
				t.Fatalf("get: %v %v", got, err)
			}
			want := net.JoinHostPort(tc.host, port) + " -> " + net.JoinHostPort(tc.wantIP, port)
			mu.Lock()
			defer mu.Unlock()
			if len(dialled) == 0 {
				t.Fatal("the resolver's dialer was not used")
			}
			for _, d := range dialled {
				if d != want {
					t.Fatalf("dialled %s, want %s", d, want)
				}
			}
		})
	}
}

func createService(ctx context.Context, t *testing.T, kube kubernetes.Interface, name, clusterIP string) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP,
			Selector:  map[string]string{"app": name},
			Ports:     []corev1.ServicePort{{Name: "etcd", Port: 2379}},
		},
	}
	if _, err := kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(fmt.Errorf("create service %s: %w", name, err))
	}
}
