package kvstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/kvstore"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    kvstore.Config
		wantErr error
	}{
		{
			name: "cilium remote cluster file",
			in: `endpoints:
- https://c2.mesh.example:2379
trusted-ca-file: /var/lib/cilium/clustermesh/c2.etcd-client-ca.crt
key-file: /var/lib/cilium/clustermesh/c2.etcd-client.key
cert-file: /var/lib/cilium/clustermesh/c2.etcd-client.crt
`,
			want: kvstore.Config{
				Endpoints:     []string{"https://c2.mesh.example:2379"},
				TrustedCAFile: "/var/lib/cilium/clustermesh/c2.etcd-client-ca.crt",
				CertFile:      "/var/lib/cilium/clustermesh/c2.etcd-client.crt",
				KeyFile:       "/var/lib/cilium/clustermesh/c2.etcd-client.key",
			},
		},
		{
			name: "all options",
			in: `endpoints: [https://127.0.0.1:2379, https://127.0.0.2:2379]
qps: 50.5
list-page-size: 500
lease-ttl: 5m
max-keys-per-lease: 100
keepalive-interval: 10
keepalive-timeout: 2.5s
dial-timeout: "3"
`,
			want: kvstore.Config{
				Endpoints:         []string{"https://127.0.0.1:2379", "https://127.0.0.2:2379"},
				QPS:               50.5,
				ListPageSize:      500,
				LeaseTTL:          kvstore.Duration(5 * time.Minute),
				MaxKeysPerLease:   100,
				KeepaliveInterval: kvstore.Duration(10 * time.Second),
				KeepaliveTimeout:  kvstore.Duration(2500 * time.Millisecond),
				DialTimeout:       kvstore.Duration(3 * time.Second),
			},
		},
		{name: "json", in: `{"endpoints":["http://127.0.0.1:2379"]}`, want: kvstore.Config{Endpoints: []string{"http://127.0.0.1:2379"}}},
		{name: "no endpoints", in: "trusted-ca-file: /ca.crt\n", wantErr: kvstore.ErrConfig},
		{name: "malformed yaml", in: "endpoints: [\n", wantErr: kvstore.ErrConfig},
		{name: "bad duration", in: "endpoints: [a]\nlease-ttl: soon\n", wantErr: kvstore.ErrConfig},
		{name: "negative qps", in: "endpoints: [a]\nqps: -1\n", wantErr: kvstore.ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kvstore.ParseConfig([]byte(tc.in))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalConfig(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func equalConfig(a, b kvstore.Config) bool {
	return reflect.DeepEqual(a, b)
}

func TestConfigDefaults(t *testing.T) {
	d := kvstore.Config{Endpoints: []string{"x"}}.WithDefaults()
	if d.ListPageSize != 10000 || d.LeaseTTL.D() != 15*time.Minute || d.MaxKeysPerLease != 1000 ||
		d.DialTimeout.D() != 5*time.Second || d.KeepaliveInterval.D() != 15*time.Second || d.KeepaliveTimeout.D() != 5*time.Second {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c2")
	if err := os.WriteFile(p, []byte("endpoints: [https://127.0.0.1:1]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := kvstore.LoadConfig(p)
	if err != nil || cfg.Endpoints[0] != "https://127.0.0.1:1" {
		t.Fatalf("LoadConfig = %+v, %v", cfg, err)
	}
	if _, err := kvstore.LoadConfig(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
