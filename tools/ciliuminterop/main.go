// Command ciliuminterop runs Cilium 1.18's own ClusterMesh code against
// clustermesh, so that interoperability is checked on code no one here
// wrote. It is a separate module: the main module never imports Cilium.
//
//	read:  Cilium's agent-side remote-cluster path (pkg/clustermesh/common:
//	       config directory, kvstore client with the heartbeat connection
//	       check, cluster config read and ValidateRemoteConfig; WatchStores
//	       behind the sync canaries with Cilium's node, service, ipcache and
//	       identity validators) over a --clustermesh-config directory; prints
//	       a JSON report of what Cilium decoded and every warning it logged.
//	write: a dump of one Cilium cluster's state, encoded with Cilium's own
//	       types, into an etcd (for our agent to read).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ciliuminterop read|write [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var err error
	switch os.Args[1] {
	case "read":
		var cfg readConfig
		fs.StringVar(&cfg.Dir, "clustermesh-config", "", "remote cluster config directory (one etcd config file per cluster)")
		fs.StringVar(&cfg.Name, "cluster-name", "cilium-local", "name of the local (Cilium) cluster")
		fs.UintVar(&cfg.ID, "cluster-id", 200, "ID of the local (Cilium) cluster")
		fs.UintVar(&cfg.MaxConnected, "max-connected-clusters", 255, "Cilium's max-connected-clusters")
		fs.Func("wait-for", "remote cluster that must sync (repeatable)", func(s string) error { cfg.WaitFor = append(cfg.WaitFor, s); return nil })
		fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "give up after this long")
		_ = fs.Parse(os.Args[2:])
		err = read(ctx, cfg, os.Stdout)
	case "write":
		var cfg writeConfig
		fs.StringVar(&cfg.EtcdConfig, "etcd-config", "", "etcd client config file (Cilium's format) of the etcd to write")
		fs.StringVar(&cfg.Name, "cluster-name", "cilium1", "name of the Cilium cluster the dump describes")
		fs.UintVar(&cfg.ID, "cluster-id", 9, "ID of that cluster")
		_ = fs.Parse(os.Args[2:])
		err = write(ctx, cfg, os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q (want read or write)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ciliuminterop:", err)
		os.Exit(1)
	}
}
