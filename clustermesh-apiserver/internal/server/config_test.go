package server

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		flag string // "" = valid
	}{
		{"valid", []string{"--cluster-name=c1", "--cluster-id=1"}, ""},
		{"valid 511", []string{"--cluster-name=c1", "--cluster-id=511", "--max-connected-clusters=511"}, ""},
		{"missing name", []string{"--cluster-id=1"}, "cluster-name"},
		{"bad name", []string{"--cluster-name=C_1", "--cluster-id=1"}, "cluster-name"},
		{"name too long", []string{"--cluster-name=" + strings.Repeat("a", 33), "--cluster-id=1"}, "cluster-name"},
		{"id 0", []string{"--cluster-name=c1", "--cluster-id=0"}, "cluster-id"},
		{"id out of range", []string{"--cluster-name=c1", "--cluster-id=256"}, "cluster-id"},
		{"default with id", []string{"--cluster-name=default", "--cluster-id=3"}, "cluster-name"},
		{"bad max", []string{"--cluster-name=c1", "--cluster-id=1", "--max-connected-clusters=100"}, "max-connected-clusters"},
		{"bad remote", []string{"--cluster-name=c1", "--cluster-id=1", "--remote-clusters=ok,Not_OK"}, "remote-clusters"},
		{"remote is self", []string{"--cluster-name=c1", "--cluster-id=1", "--remote-clusters=c1"}, "remote-clusters"},
		{"remote with external etcd", []string{"--cluster-name=c1", "--cluster-id=1", "--remote-clusters=c2", "--kvstore-config=/x"}, "remote-clusters"},
		{"zero heartbeat", []string{"--cluster-name=c1", "--cluster-id=1", "--heartbeat-interval=0s"}, "heartbeat-interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			cfg.RegisterFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrFlag) || !strings.Contains(err.Error(), "--"+tc.flag+":") {
				t.Fatalf("error %v does not name --%s", err, tc.flag)
			}
		})
	}
}
