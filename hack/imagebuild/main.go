package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/clustermesh/clustermesh/internal/ociimage"
)

func main() {
	cfg := ociimage.BuildConfig{ModDir: "."}
	var names string
	flag.StringVar(&cfg.OutDir, "o", "bin/images", "output directory for the <image>.tar archives")
	flag.StringVar(&cfg.Version, "version", "", "image tag and binary version (hack/version.sh)")
	flag.StringVar(&cfg.Commit, "commit", "", "commit stamped into the binaries (hack/version.sh --commit)")
	flag.StringVar(&names, "images", "agent,apiserver", "images to build (agent, apiserver, echo)")
	flag.Parse()
	cfg.Names = strings.Split(names, ",")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	built, err := ociimage.Build(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		stop()
		os.Exit(1)
	}
	for _, b := range built {
		fmt.Printf("%s\t%s\t%s\n", b.Archive, b.Ref, b.Digest)
	}
}
