package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/server"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/internal/version"
)

func main() {
	cfg := server.DefaultConfig()
	var debug bool
	logFormat := logging.JSON
	cmd := &cobra.Command{
		Use:           "clustermesh-apiserver",
		Short:         "Publish this cluster's state into etcd for the other clusters of the mesh",
		Args:          cobra.NoArgs,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PreRunE:       func(*cobra.Command, []string) error { return cfg.Validate() },
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := logging.New(os.Stderr, logFormat, level)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return server.Main(ctx, cfg, log)
		},
	}
	cfg.RegisterFlags(cmd.Flags())
	cmd.Flags().BoolVar(&debug, "debug", false, "log at debug level")
	cmd.Flags().Var(&logFormat, "log-format", "log format: text or json")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "clustermesh-apiserver:", err)
		os.Exit(1)
	}
}
