package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cmd/clustermesh/internal/mesh"
)

const connectLong = `connect lets clusters read each other's state. For each connected pair A, B and each
direction (A reads B, B reads A) it:

  - reads both clusters' name, ID and maxConnectedClusters (set by enable) and refuses
    clusters with the same name, the same ID, ID 0, different maxConnectedClusters, or
    an ID already used by another remote;
  - finds B's clustermesh-apiserver endpoint (load balancer ingress, node InternalIPs
    with the node port, or the ClusterIP) and checks it accepts TCP connections;
  - makes B's etcd server certificate cover that endpoint;
  - adds the read-only etcd user remote-<A> to B (ConfigMap clustermesh-remote-users);
    with --auth-mode legacy, A reads as the shared user remote instead;
  - writes B's etcd client config, CA and a client certificate for that user
    (CN=remote-<A>, or CN=remote) signed by B's CA into A's Secret
    clustermesh-remote-clusters, which A's agents mount.

Auth modes (Cilium's clustermesh.apiserver.tls.authMode):
  cluster  each reader is its own etcd user remote-<reader>; disconnect revokes it
           alone. Default.
  legacy   every legacy reader is the one user remote (CN=remote), what a Cilium 1.18
           cluster in its default mode presents; the user exists while some reader
           uses it, so disconnecting one legacy reader does not revoke the others'
           certificates. Running connect again with the other mode switches the pair.

Connection modes:
  bidirectional  --context is connected with each --destination-context (a star);
                 the destinations are not connected among themselves. Default.
  mesh           every pair of all the given contexts is connected.

Everything is checked before the first write, and a second run writes nothing.`

const disconnectLong = `disconnect undoes connect for the same contexts and mode: each side loses the other's
entry in its Secret clustermesh-remote-clusters, and the read-only etcd user of the
other side (remote-<cluster>) is removed. Agents drop the remote cluster's state; the
apiserver revokes the user. Running it again changes nothing.`

func newConnectCommand(cfg Config, g *globals, disconnect bool) *cobra.Command {
	var (
		source string
		dests  []string
		cc     mesh.ConnectConfig
	)
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Connect clusters with each other",
		Long:  connectLong,
		Example: `  # Connect two clusters both ways.
  clustermesh connect --context c1 --destination-context c2

  # Connect c1 with c2 and with c3 (not c2 with c3).
  clustermesh connect --context c1 --destination-context c2 --destination-context c3

  # Connect every pair of c1, c2 and c3.
  clustermesh connect --context c1 --destination-context c2,c3 --connection-mode mesh

  # Clusters whose apiserver endpoint only the nodes can reach.
  clustermesh connect --context c1 --destination-context c2 --skip-endpoint-check`,
		Args: cobra.NoArgs,
	}
	if disconnect {
		cmd.Use, cmd.Short, cmd.Long = "disconnect", "Disconnect clusters", disconnectLong
		cmd.Example = `  # Undo: clustermesh connect --context c1 --destination-context c2
  clustermesh disconnect --context c1 --destination-context c2

  # Take c1, c2 and c3 apart again.
  clustermesh disconnect --context c1 --destination-context c2,c3 --connection-mode mesh`
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		src, err := g.open(source)
		if err != nil {
			return err
		}
		ds, err := g.openAll(dests)
		if err != nil {
			return err
		}
		var res mesh.Result
		if disconnect {
			res, err = mesh.Disconnect(cmd.Context(), src, ds, cc.Mode, cfg.Log)
		} else {
			res, err = mesh.Connect(cmd.Context(), src, ds, cc, cfg.Log)
		}
		if err != nil {
			return err
		}
		var ps []string
		for _, p := range res.Pairs {
			ps = append(ps, p.A+" <-> "+p.B)
		}
		verb := map[bool]string{false: "connected", true: "disconnected"}[disconnect]
		if len(res.Changed) == 0 {
			fmt.Fprintf(cfg.Stdout, "already %s: %s (nothing changed)\n", verb, strings.Join(ps, ", "))
			return nil
		}
		fmt.Fprintf(cfg.Stdout, "%s: %s\n", verb, strings.Join(ps, ", "))
		for _, c := range res.Changed {
			fmt.Fprintf(cfg.Stdout, "  updated %s\n", c)
		}
		return nil
	}
	f := cmd.Flags()
	f.StringVar(&source, "context", "", "kubeconfig context of the source cluster (default: current context)")
	f.StringSliceVar(&dests, "destination-context", nil, "kubeconfig context(s) of the destination cluster(s) (repeatable or comma-separated)")
	f.StringVar(&cc.Mode, "connection-mode", mesh.ModeBidirectional, "bidirectional or mesh")
	if !disconnect {
		f.BoolVar(&cc.SkipEndpointCheck, "skip-endpoint-check", false, "do not check that the apiserver endpoints accept TCP connections from here")
		f.DurationVar(&cc.DialTimeout, "dial-timeout", 3*time.Second, "timeout of each endpoint check")
		f.StringVar(&cc.AuthMode, "auth-mode", mesh.AuthCluster, "how readers authenticate: cluster (user remote-<reader>) or legacy (shared user remote, Cilium's default)")
	}
	_ = cmd.MarkFlagRequired("destination-context")
	return cmd
}
