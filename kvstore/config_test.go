package kvstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
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
	if d.ListPageSize != kvstore.DefaultListPageSize || d.LeaseTTL.D() != 15*time.Minute || d.MaxKeysPerLease != 1000 ||
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

func TestWriteConfigFiles(t *testing.T) {
	src, dir := t.TempDir(), filepath.Join(t.TempDir(), "remotes", "c2")
	rc := kvstore.Config{}
	for _, f := range []struct {
		path *string
		name string
	}{{&rc.TrustedCAFile, "ca.crt"}, {&rc.CertFile, "tls.crt"}, {&rc.KeyFile, "tls.key"}} {
		*f.path = filepath.Join(src, f.name)
		if err := os.WriteFile(*f.path, []byte("pem of "+f.name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eps := []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}
	if err := kvstore.WriteConfigFiles(dir, "c1", eps, rc); err != nil {
		t.Fatal(err)
	}
	got, err := kvstore.LoadConfig(filepath.Join(dir, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Endpoints, eps) {
		t.Errorf("endpoints %v, want %v", got.Endpoints, eps)
	}
	for file, want := range map[string]string{got.TrustedCAFile: "pem of ca.crt", got.CertFile: "pem of tls.crt", got.KeyFile: "pem of tls.key"} {
		if filepath.Dir(file) != dir || !strings.HasPrefix(filepath.Base(file), "c1.etcd-client") {
			t.Errorf("file %s is not c1.etcd-client* next to the config", file)
		}
		if data, err := os.ReadFile(file); err != nil || string(data) != want {
			t.Errorf("%s: %q, %v; want %q", file, data, err, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("%d files in %s, want the config and 3 PEM files (no temporary left)", len(entries), dir)
	}
	rc.KeyFile = filepath.Join(src, "missing.key")
	if err := kvstore.WriteConfigFiles(dir, "c3", eps, rc); err == nil || !strings.Contains(err.Error(), "client config c3") {
		t.Errorf("missing key file: %v", err)
	}
}
