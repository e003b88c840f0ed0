package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agent/internal/daemon"
	"github.com/clustermesh/clustermesh/agent/internal/statusapi"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "clustermesh-agent:", err)
		stop()
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	cfg := daemon.DefaultConfig()
	logFormat := logging.Text
	root := &cobra.Command{
		Use:           "clustermesh-agent",
		Short:         "Per-node agent: watches every cluster of the mesh and programs the datapath",
		Args:          cobra.NoArgs,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.Run(cmd.Context(), cfg, logging.New(os.Stderr, logFormat, slog.LevelInfo))
		},
	}
	cfg.RegisterFlags(root.Flags())
	root.PersistentFlags().Var(&logFormat, "log-format", "log format: text or json")
	root.AddCommand(newStatusCommand(), newCleanupCommand(&logFormat), newBPFCommand(), newPolicyCommand())
	return root
}

func newStatusCommand() *cobra.Command {
	var socket, output string
	var entries bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the status of the agent on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			resp, err := statusapi.Fetch(ctx, socket, entries)
			if err != nil {
				return err
			}
			if output == "json" {
				return statusapi.PrintJSON(cmd.OutOrStdout(), resp)
			}
			return statusapi.PrintTable(cmd.OutOrStdout(), resp)
		},
	}
	cmd.Flags().StringVar(&socket, "status-socket", daemon.DefaultStatusSocket, "unix socket of the agent's status API")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&entries, "entries", false, "include tunnel and ipcache entries")
	return cmd
}
