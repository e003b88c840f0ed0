package daemon

import (
	"errors"
	"testing"

	"github.com/spf13/pflag"
	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFlagsAndValidate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		ok   bool
	}{
		{"complete", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x", "--datapath=memory"}, true},
		{"no node", []string{"--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x"}, false},
		{"cluster id 0", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=0", "--clustermesh-config=/x"}, false},
		{"id above max", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=300", "--clustermesh-config=/x"}, false},
		{"511 clusters", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=300", "--max-connected-clusters=511", "--clustermesh-config=/x"}, true},
		{"bad datapath", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x", "--datapath=xdp"}, false},
		{"no config dir", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1"}, false},
		{"cluster CIDRs beside a primary CNI", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x", "--cluster-cidrs=10.244.0.0/16,fd00:10:244::/56"}, true},
		{"only global services beside kube-proxy", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x", "--coexist-services=global"}, true},
		{"unknown coexist services", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x", "--coexist-services=none"}, false},
		{"cluster CIDRs in full mode", []string{"--node-name=n1", "--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/x", "--mode=full", "--cluster-cidrs=10.244.0.0/16"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			cfg.RegisterFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Fatalf("Validate: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestMergeConfig: beside kube-proxy the merger leaves it the Services it
// keeps, and with --coexist-services=global every Service not global; in
// full mode there is no kube-proxy and the option does not apply.
func TestMergeConfig(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		args                  []string
		wantProxy, wantGlobal bool
	}{
		{name: "coexist default: every Service", wantProxy: true},
		{name: "coexist, global only", args: []string{"--coexist-services=global"}, wantProxy: true, wantGlobal: true},
		{name: "full", args: []string{"--mode=full"}},
		{name: "full ignores global only", args: []string{"--mode=full", "--coexist-services=global"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			cfg.RegisterFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			m := cfg.mergeConfig()
			if m.Proxy != tc.wantProxy || m.GlobalOnly != tc.wantGlobal {
				t.Errorf("Proxy, GlobalOnly = %v, %v; want %v, %v", m.Proxy, m.GlobalOnly, tc.wantProxy, tc.wantGlobal)
			}
			if m.FailbackShare != servicemerge.DefaultConfig().FailbackShare {
				t.Errorf("FailbackShare %v lost", m.FailbackShare)
			}
		})
	}
}
