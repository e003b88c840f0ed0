package demo

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// Config is what the demo needs.
type Config struct {
	Mesh harness.Config
	// Hold keeps the mesh up after the story until ctx is done.
	Hold bool
	Out  io.Writer
}

// Run brings the mesh up, tells the story and tears everything down.
func Run(ctx context.Context, cfg Config) error {
	say := func(format string, a ...any) { fmt.Fprintf(cfg.Out, format+"\n", a...) }
	say("==> starting 3 clusters (kube-apiserver, kube-controller-manager, clustermesh-apiserver; 2 nodes with an agent each)")
	start := time.Now()
	m, err := harness.Start(ctx, cfg.Mesh)
	if err != nil {
		return err
	}
	defer func() {
		say("==> tearing down: processes, namespaces, bpffs mounts")
		m.Close()
	}()
	if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
		return err
	}
	say("    joined with clustermesh enable --connection-mode %s (per cluster) and clustermesh connect --connection-mode mesh", m.Connection())
	if m.Connection() == harness.ConnectionKVStoreMesh {
		say("    mesh ready after %v: each apiserver's kvstoremesh connected once to the 2 other clusters' etcds,", time.Since(start).Round(time.Second))
		say("    every agent reads both from the cache in its own cluster's etcd")
	} else {
		say("    mesh ready after %v: every agent connected to the 2 other clusters", time.Since(start).Round(time.Second))
	}
	c1 := m.Clusters[0]
	client, err := c1.Nodes[0].AddPod(ctx, "client", map[string]string{"app": "client"})
	if err != nil {
		return err
	}
	say("    pods: %s", podList(m))

	vip, err := service(ctx, m, "echo", map[string]string{"service.cilium.io/global": "true"}, 6)
	if err != nil {
		return err
	}
	say("\n==> Service e2e/echo, annotated service.cilium.io/global=true in all 3 clusters")
	say("    30 requests from %s/%s to its local ClusterIP %s:", c1.Name, client.Name, vip)
	say("    %s", requests(client, vip, 30))

	vip, err = service(ctx, m, "echo-local", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/affinity": "local"}, 2)
	if err != nil {
		return err
	}
	say("\n==> Service e2e/echo-local, global with service.cilium.io/affinity=local")
	say("    20 requests to %s: %s", vip, requests(client, vip, 20))
	say("    %s's echo pods become unready (as if they crashed) ...", c1.Name)
	var backends []*harness.Pod
	for _, p := range c1.Pods() {
		if p != client {
			backends = append(backends, p)
			if err := p.SetReady(ctx, false); err != nil {
				return err
			}
		}
	}
	changed := time.Now()
	addr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	for ctx.Err() == nil && time.Since(changed) < time.Minute {
		if s, err := client.HTTP(addr, time.Second); err == nil && s.Cluster != c1.Name {
			say("    first request served by another cluster (%s/%s) %v after the change", s.Cluster, s.Pod, time.Since(changed).Round(time.Millisecond))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	say("    20 requests to %s: %s", vip, requests(client, vip, 20))
	for _, p := range backends {
		if err := p.SetReady(ctx, true); err != nil {
			return err
		}
	}
	say("    %s's echo pods are ready again ...", c1.Name)
	if err := c1.Nodes[0].WaitBackends(ctx, harness.PodNamespace, "echo-local", 6, 2, 30*time.Second); err != nil {
		return err
	}
	say("    20 requests to %s: %s", vip, requests(client, vip, 20))

	if err := policyStory(ctx, m, say); err != nil {
		return err
	}

	say("\n==> clustermesh-agent status on %s/%s", c1.Name, c1.Nodes[0].Name)
	st, err := c1.Nodes[0].StatusText(ctx, "table")
	if err != nil {
		return err
	}
	say("%s", st)
	args := []string{"status"}
	for _, c := range m.Clusters {
		args = append(args, "--context="+c.Name)
	}
	// The agents write their reports into the Kubernetes API about once a
	// second; the story above may have taken less.
	if err := m.WaitReports(ctx, 30*time.Second); err != nil {
		return err
	}
	say("==> clustermesh %s (the agents' reports, read from each cluster's Kubernetes API)", strings.Join(args, " "))
	out, err := m.CLIStatus(ctx, args[1:]...)
	if err != nil {
		return err
	}
	say("%s", out)
	if cfg.Hold {
		say("==> the mesh stays up (namespaces %s-%s-*); press Ctrl-C to tear it down", cfg.Mesh.Prefix, m.Run)
		<-ctx.Done()
	}
	return nil
}

// service creates a global service in every cluster and waits until the
// first cluster's first node programs its 6 backends.
func service(ctx context.Context, m *harness.Mesh, name string, ann map[string]string, weighted int) (string, error) {
	var vip string
	for i, c := range m.Clusters {
		ip, err := c.CreateService(ctx, name, ann)
		if err != nil {
			return "", err
		}
		if i == 0 {
			vip = ip
		}
	}
	return vip, m.Clusters[0].Nodes[0].WaitBackends(ctx, harness.PodNamespace, name, 6, weighted, time.Minute)
}

// requests sends n requests and summarises who answered, by cluster and pod.
func requests(p *harness.Pod, vip string, n int) string {
	addr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	by, failed := map[string]int{}, 0
	for range n {
		s, err := p.HTTP(addr, 2*time.Second)
		if err != nil {
			failed++
			continue
		}
		by[s.Cluster+"/"+s.Pod]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(by)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, by[k]))
	}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("failed ×%d", failed))
	}
	return strings.Join(parts, ", ")
}

func podList(m *harness.Mesh) string {
	var out []string
	for _, c := range m.Clusters {
		for _, p := range c.Pods() {
			out = append(out, fmt.Sprintf("%s/%s %s", c.Name, p.Name, p.IP))
		}
	}
	return strings.Join(out, ", ")
}
