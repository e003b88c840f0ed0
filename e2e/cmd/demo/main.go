package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/clustermesh/clustermesh/e2e/demo"
	"github.com/clustermesh/clustermesh/e2e/harness"
)

func main() {
	kubeBin := flag.String("kube-bin-dir", os.Getenv("KUBE_BIN_DIR"), "directory with kube-apiserver and kube-controller-manager")
	repo := flag.String("repo", ".", "root of the clustermesh module (binaries are built from it)")
	hold := flag.Bool("hold", false, "keep the mesh up after the story until Ctrl-C")
	keep := flag.Bool("keep-logs", false, "keep the work directory with every log")
	flag.Parse()
	if err := run(*kubeBin, *repo, *hold, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(kubeBin, repo string, hold, keep bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, eBPF)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "clustermesh-demo-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Println("logs in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	fmt.Println("==> building clustermesh-apiserver, clustermesh-agent, clustermesh and the echo server")
	bins, err := harness.Build(ctx, repo, dir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	err = demo.Run(ctx, demo.Config{
		Mesh: harness.Config{Prefix: "cmd", KubeBinDir: kubeBin, Bins: bins, Dir: filepath.Join(dir, "mesh"), Log: log},
		Hold: hold, Out: os.Stdout,
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("interrupted; everything it started is torn down")
	}
	return err
}
