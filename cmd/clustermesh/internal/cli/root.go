package cli

import (
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
	"github.com/clustermesh/clustermesh/internal/version"
)

// Config holds what the commands write to and log with.
type Config struct {
	Stdout io.Writer
	// Stderr receives progress and errors.
	Stderr io.Writer
	Log    *slog.Logger
}

// globals are the flags every command shares.
type globals struct {
	kubeconfig string
	namespace  string
}

func (g *globals) target(context string) mesh.Target {
	return mesh.Target{Kubeconfig: g.kubeconfig, Context: context, Namespace: g.namespace}
}

func (g *globals) open(context string) (*mesh.Cluster, error) {
	return mesh.Open(g.target(context))
}

func (g *globals) openAll(contexts []string) ([]*mesh.Cluster, error) {
	var cs []*mesh.Cluster
	for _, ctx := range contexts {
		c, err := g.open(ctx)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// NewRootCommand returns the clustermesh command with its subcommands.
func NewRootCommand(cfg Config) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "clustermesh",
		Short: "Connect Kubernetes clusters into a Cilium-compatible cluster mesh",
		Long: `clustermesh installs the clustermesh control plane into clusters, connects them
pairwise or as a full mesh, and shows the health of the mesh.

Clusters are named by kubeconfig contexts. The kubeconfig is --kubeconfig, else the
KUBECONFIG list (files merged, as kubectl does), else ~/.kube/config.`,
		Example: `  clustermesh enable --context c1 --cluster-name c1 --cluster-id 1
  clustermesh enable --context c2 --cluster-name c2 --cluster-id 2
  clustermesh connect --context c1 --destination-context c2
  clustermesh status --context c1 --context c2 --wait`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetOut(cfg.Stdout)
	root.SetErr(cfg.Stderr)
	root.PersistentFlags().StringVar(&g.kubeconfig, "kubeconfig", "", "path of the kubeconfig file (default: KUBECONFIG list or ~/.kube/config)")
	root.PersistentFlags().StringVarP(&g.namespace, "namespace", "n", mesh.DefaultNamespace, "namespace of the clustermesh release in every cluster")
	root.AddCommand(newEnableCommand(cfg, g), newConnectCommand(cfg, g, false), newConnectCommand(cfg, g, true), newStatusCommand(cfg, g), newDisableCommand(cfg, g), newVersionCommand(cfg))
	return root
}
