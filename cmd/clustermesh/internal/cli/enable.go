package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
)

func newEnableCommand(cfg Config, g *globals) *cobra.Command {
	var (
		context string
		ec      = mesh.EnableConfig{}
		id      uint32
	)
	cmd := &cobra.Command{
		Use:   "enable",
		Short: "Install or upgrade clustermesh in a cluster",
		Long: `enable installs the clustermesh chart (embedded in this binary) into the cluster of
--context, or upgrades it when it is already installed. It creates the cluster's
certificate authority, the etcd server certificate and the etcd root user's
certificate as Secrets, and reuses them on later runs.

The name and ID of an enabled cluster cannot be changed: remote clusters and
allocated identities depend on them.`,
		Example: `  # Install with the defaults: NodePort service, 255 connected clusters.
  clustermesh enable --context kind-c1 --cluster-name c1 --cluster-id 1

  # Expose the apiserver through a load balancer, with 511 clusters.
  clustermesh enable --context prod-eu --cluster-name eu --cluster-id 300 \
    --service-type LoadBalancer --max-connected-clusters 511

  # Override chart values (see deploy/charts/clustermesh/README.md).
  clustermesh enable --context c1 --cluster-name c1 --cluster-id 1 \
    --set agent.image.tag=v0.1.1 --set apiserver.service.nodePort=31379`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open(context)
			if err != nil {
				return err
			}
			ec.ClusterID = id
			res, err := mesh.Enable(cmd.Context(), c, ec, cfg.Log)
			if err != nil {
				return err
			}
			verb := "installed"
			if res.Upgraded {
				verb = "upgraded"
			}
			fmt.Fprintf(cfg.Stdout, "clustermesh %s in context %s as cluster %s (ID %d), release %s revision %d\n",
				verb, c.Context, ec.ClusterName, ec.ClusterID, res.Release, res.Revision)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&context, "context", "", "kubeconfig context of the cluster (default: current context)")
	f.StringVar(&ec.ClusterName, "cluster-name", "", "name of the cluster in the mesh (required)")
	f.Uint32Var(&id, "cluster-id", 0, "ID of the cluster in the mesh, 1..255 or 1..511 (required)")
	f.IntVar(&ec.MaxConnectedClusters, "max-connected-clusters", 255, "255 or 511; must be equal on every cluster of the mesh")
	f.StringVar(&ec.ServiceType, "service-type", "", "how other clusters reach this one: LoadBalancer, NodePort (chart default) or ClusterIP")
	f.StringArrayVar(&ec.ServerSANs, "server-san", nil, "extra DNS name or IP of the etcd server certificate (repeatable)")
	f.StringVar(&ec.ConnectionMode, "connection-mode", "", "how the agents read remote clusters: direct (each agent connects to every remote etcd; chart default) or kvstoremesh (each agent reads the cache the apiserver's kvstoremesh keeps in this cluster's etcd: one connection per remote cluster)")
	f.StringArrayVar(&ec.Set, "set", nil, "chart value in Helm's key=value syntax (repeatable)")
	f.BoolVar(&ec.Wait, "wait", false, "wait until the apiserver and agents are ready")
	f.DurationVar(&ec.Timeout, "timeout", 5*time.Minute, "how long --wait waits")
	_ = cmd.MarkFlagRequired("cluster-name")
	_ = cmd.MarkFlagRequired("cluster-id")
	return cmd
}
