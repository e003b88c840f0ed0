package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
)

func newDisableCommand(cfg Config, g *globals) *cobra.Command {
	var (
		context string
		dc      = mesh.DisableConfig{}
	)
	cmd := &cobra.Command{
		Use:   "disable",
		Short: "Uninstall clustermesh from a cluster (the opposite of enable)",
		Long: `disable uninstalls the clustermesh release from the cluster of --context and deletes
what enable and connect created beside it: the certificate authority and certificate
Secrets, the remote-clusters Secret, the remote-users ConfigMap and the status
ConfigMaps. As its DaemonSet is deleted, the agent on every node detaches its
programs and removes its pinned maps and its tunnel device (with --wait, disable
waits until the pods are gone). The namespace stays. Clusters connected to this one
keep its configuration until you run disconnect there.`,
		Example: `  clustermesh disable --context c1 --wait`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open(context)
			if err != nil {
				return err
			}
			res, err := mesh.Disable(cmd.Context(), c, dc, cfg.Log)
			if err != nil {
				return err
			}
			what := "no release was installed"
			if res.Uninstalled {
				what = "release uninstalled"
			}
			fmt.Fprintf(cfg.Stdout, "clustermesh disabled in context %s: %s; deleted %s\n", c.Context, what, dash(strings.Join(res.Deleted, ", ")))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&context, "context", "", "kubeconfig context of the cluster (default: current context)")
	f.BoolVar(&dc.Wait, "wait", false, "wait until the release's pods are gone (and have cleaned their nodes up)")
	f.DurationVar(&dc.Timeout, "timeout", 5*time.Minute, "how long --wait waits")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "nothing else"
	}
	return s
}
