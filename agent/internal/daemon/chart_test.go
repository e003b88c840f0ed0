package daemon

import (
	"os"
	"regexp"
	"testing"

	"github.com/spf13/pflag"
)

// TestChartFlagsExist checks that every flag the chart's DaemonSet passes
// to the agent is registered: an unknown flag would crash-loop the pod.
func TestChartFlagsExist(t *testing.T) {
	data, err := os.ReadFile("../../../deploy/charts/clustermesh/templates/agent-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	flags := regexp.MustCompile(`(?m)^\s+- --([a-z0-9-]+)`).FindAllSubmatch(data, -1)
	if len(flags) < 5 {
		t.Fatalf("found only %d flags in the chart's agent args", len(flags))
	}
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	for _, f := range flags {
		if fs.Lookup(string(f[1])) == nil {
			t.Errorf("the chart passes --%s, which the agent does not know", f[1])
		}
	}
}
