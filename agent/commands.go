package main

import (
	"flag"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agent/internal/daemon"
	"github.com/clustermesh/clustermesh/agent/internal/statusapi"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// newCleanupCommand removes the datapath from this node: what the agent
// does itself when its DaemonSet is deleted, by hand.
func newCleanupCommand(format *logging.Format) *cobra.Command {
	var pinDir string
	tunnel := bpf.DefaultTunnelConfig()
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach the agent's programs, remove its pinned maps and the tunnel device it created",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return daemon.Cleanup(pinDir, tunnel, logging.New(os.Stderr, *format, slog.LevelInfo))
		},
	}
	gfs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	gfs.StringVar(&pinDir, "bpf-pin-dir", bpf.DefaultPinDir, "bpffs directory of the datapath's pins")
	gfs.StringVar(&tunnel.Device, "tunnel-device", tunnel.Device, "tunnel device to remove if the agent created it")
	cmd.Flags().AddGoFlagSet(gfs)
	return cmd
}

// newBPFCommand reads what the kernel holds: the maps pinned by the agent.
func newBPFCommand() *cobra.Command {
	var pinDir, output string
	cmd := &cobra.Command{
		Use:   "bpf",
		Short: "Read the datapath's pinned maps (what is programmed, beside the desired state of status --entries)",
	}
	cmd.PersistentFlags().StringVar(&pinDir, "bpf-pin-dir", bpf.DefaultPinDir, "bpffs directory of the datapath's pins")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	for _, table := range []string{statusapi.TableTunnel, statusapi.TableIPCache, statusapi.TableService} {
		list := &cobra.Command{Use: "list", Short: "List the " + table + " entries of the pinned maps", Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				st, err := bpf.DumpPinned(pinDir)
				if err != nil {
					return err
				}
				return statusapi.PrintPinned(cmd.OutOrStdout(), st, table, output == "json")
			}}
		sub := &cobra.Command{Use: table, Short: "The " + table + " map"}
		sub.AddCommand(list)
		cmd.AddCommand(sub)
	}
	return cmd
}
