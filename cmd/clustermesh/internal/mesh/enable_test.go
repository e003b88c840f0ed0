package mesh

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
)

// TestServerCertCoversEndpointsAtEnable checks that enable issues the etcd
// server certificate for the addresses other clusters will dial, so connect
// has nothing to reissue (a reissued Secret reaches the apiserver pod only
// when the kubelet refreshes its volume; the agents' first dials failed
// until then).
func TestServerCertCoversEndpointsAtEnable(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	chrt, err := deploy.LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		vals      map[string]any
		noService bool
		want      []string
	}{
		{"nodeport-default-before-install", nil, true, []string{"192.0.2.2"}},
		{"nodeport-upgrade", nil, false, []string{"192.0.2.2"}},
		{"clusterip-before-install", map[string]any{"apiserver": map[string]any{"service": map[string]any{"type": "ClusterIP"}}}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := fakeCluster(t, "b", 2)
			if tc.noService {
				if err := b.Client.CoreV1().Services(DefaultNamespace).Delete(ctx, serviceAPIServer, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			got := b.expectedEndpointHosts(ctx, chrt, tc.vals, log)
			if !slices.Equal(dedupHosts(got), tc.want) {
				t.Fatalf("hosts = %v, want %v", got, tc.want)
			}
		})
	}

	a, b := fakeCluster(t, "a", 1), fakeCluster(t, "b", 2)
	ca, err := b.readCA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ensureServerCert(ctx, ca, "b", b.expectedEndpointHosts(ctx, chrt, nil, log)); err != nil {
		t.Fatal(err)
	}
	before, err := b.Client.CoreV1().Secrets(DefaultNamespace).Get(ctx, secretServer, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Connect(ctx, a, []*Cluster{b}, ConnectConfig{SkipEndpointCheck: true}, log); err != nil {
		t.Fatal(err)
	}
	after, err := b.Client.CoreV1().Secrets(DefaultNamespace).Get(ctx, secretServer, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before.Data["tls.crt"], after.Data["tls.crt"]) {
		t.Fatalf("connect reissued the server certificate enable made: its hosts %v lacked %v", certHosts(before.Data["tls.crt"]), certHosts(after.Data["tls.crt"]))
	}
}
