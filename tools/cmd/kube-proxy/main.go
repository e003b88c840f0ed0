// Command kube-proxy is the upstream Kubernetes service proxy, built from the
// k8s.io/kubernetes module for the install test on real nodes (e2e/kubelet).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
