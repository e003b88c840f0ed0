package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
)

func newStatusCommand(cfg Config, g *globals) *cobra.Command {
	var (
		contexts []string
		wait     bool
		timeout  time.Duration
		interval time.Duration
		output   string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the health of the mesh",
		Long: `status shows, for each cluster, whether its clustermesh-apiserver is ready and, for each
agent, the state of every remote cluster: connected, synced, entries per kind (a '*'
marks a kind whose initial sync has not completed), invalid entries dropped,
reconnects and the last error. It ends with a one-line verdict and exits non-zero
when the mesh is not ready: a cluster whose kube-apiserver does not answer shows
"cannot reach", one without the chart "not enabled".

The agents and the apiserver publish their status as ConfigMaps
(clustermesh-status-*) in the release namespace, so status needs nothing but read
access to the Kubernetes API. With --wait it polls until every cluster is ready and
exits non-zero on timeout, naming what is not ready.

-o json prints a stable schema: {version, ready, verdict, clusters: [{context,
namespace, enabled, cluster, clusterID, remotes, apiserver, agents, problems, ready}]}.`,
		Example: `  clustermesh status --context c1
  clustermesh status --context c1 --context c2 --context c3 --wait --timeout 5m
  clustermesh status --context c1,c2 -o json | jq .verdict`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("%w: -o %q (want table or json)", mesh.ErrUsage, output)
			}
			if len(contexts) == 0 {
				contexts = []string{""}
			}
			cs, err := g.openAll(contexts)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			st := mesh.CollectStatus(ctx, cs)
			if wait && !st.Ready {
				cfg.Log.Info("waiting for the mesh to become ready", "timeout", timeout)
				deadline := time.Now().Add(timeout)
				for !st.Ready && time.Now().Before(deadline) {
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(min(interval, time.Until(deadline))):
					}
					st = mesh.CollectStatus(ctx, cs)
					if !st.Ready {
						cfg.Log.Info("not ready yet", "verdict", st.Verdict)
					}
				}
			}
			if output == "json" {
				enc := json.NewEncoder(cfg.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else if err := mesh.RenderStatus(cfg.Stdout, st); err != nil {
				return err
			}
			if st.Ready {
				return nil
			}
			var ps []string
			for _, c := range st.Clusters {
				for _, p := range c.Problems {
					ps = append(ps, c.Context+": "+p)
				}
			}
			if wait {
				return fmt.Errorf("%w after %s: %s", mesh.ErrNotReady, timeout, strings.Join(ps, "; "))
			}
			return fmt.Errorf("%w: %s", mesh.ErrNotReady, strings.Join(ps, "; "))
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&contexts, "context", nil, "kubeconfig context(s) to inspect (repeatable or comma-separated; default: current context)")
	f.BoolVar(&wait, "wait", false, "wait until every cluster is ready")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	f.DurationVar(&interval, "interval", 2*time.Second, "how often --wait polls")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
