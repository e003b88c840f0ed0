package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/clustermesh/clustermesh/e2e/echo"
)

func main() {
	var cfg echo.Config
	flag.StringVar(&cfg.Cluster, "cluster", "", "cluster name to answer with")
	flag.StringVar(&cfg.Pod, "pod", "", "pod name to answer with")
	flag.StringVar(&cfg.HTTPAddr, "http", ":8080", "HTTP listen address")
	flag.StringVar(&cfg.UDPAddr, "udp", ":8081", "UDP listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := echo.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}
