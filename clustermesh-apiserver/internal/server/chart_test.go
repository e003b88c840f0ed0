package server

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/deploy"
)

// renderDeployment renders the embedded chart with values and returns the
// clustermesh-apiserver Deployment.
func renderDeployment(t *testing.T, values map[string]any) *appsv1.Deployment {
	t.Helper()
	c, err := deploy.LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	inst := action.NewInstall(&action.Configuration{})
	inst.ClientOnly, inst.DryRun, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = "clustermesh", "clustermesh-system"
	inst.KubeVersion = &chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}
	rel, err := inst.Run(c, values)
	if err != nil {
		t.Fatalf("render chart: %v", err)
	}
	for _, doc := range releaseutil.SplitManifests(rel.Manifest) {
		var d appsv1.Deployment
		if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
			continue
		}
		if d.Kind == "Deployment" && d.Name == "clustermesh-apiserver" {
			return &d
		}
	}
	t.Fatal("chart renders no clustermesh-apiserver Deployment")
	return nil
}

// expandEnv replaces $(VAR) references the way the kubelet does, with
// placeholder values for the container's env.
func expandEnv(arg string, env []corev1.EnvVar) string {
	for _, e := range env {
		v := e.Value
		if v == "" {
			v = "env-" + strings.ToLower(e.Name)
		}
		arg = strings.ReplaceAll(arg, "$("+e.Name+")", v)
	}
	return arg
}

// TestChartArgs parses the arguments the chart passes to the
// clustermesh-apiserver with the binary's own flag set and validates them,
// so that the chart and the binary cannot drift apart. It also checks that
// every file or directory the arguments name is mounted.
func TestChartArgs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		check  func(t *testing.T, cfg Config)
	}{
		{"embedded", map[string]any{"cluster": map[string]any{"name": "c1", "id": 3}}, func(t *testing.T, cfg Config) {
			if cfg.KVStoreConfig != "" || cfg.EtcdTLSDir == "" || cfg.EtcdServerTLSDir == "" {
				t.Errorf("embedded etcd without its TLS dirs: %+v", cfg)
			}
		}},
		{"external", map[string]any{
			"cluster": map[string]any{"name": "c1", "id": 3},
			"etcd":    map[string]any{"mode": "external", "external": map[string]any{"endpoints": []any{"https://etcd:2379"}, "tlsSecret": "etcd-client"}},
		}, func(t *testing.T, cfg Config) {
			if cfg.KVStoreConfig == "" || cfg.EtcdServerTLSDir != "" {
				t.Errorf("external etcd: %+v", cfg)
			}
		}},
		{"ports, extra args", map[string]any{
			"cluster":   map[string]any{"name": "c1", "id": 3},
			"apiserver": map[string]any{"metricsPort": 9999, "extraArgs": []any{"--pod-workers=8"}},
		}, func(t *testing.T, cfg Config) {
			if cfg.MetricsAddress != ":9999" || cfg.PodWorkers != 8 {
				t.Errorf("metrics %q, pod workers %d", cfg.MetricsAddress, cfg.PodWorkers)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := renderDeployment(t, tc.values)
			var ctr *corev1.Container
			for i := range d.Spec.Template.Spec.Containers {
				if d.Spec.Template.Spec.Containers[i].Name == "apiserver" {
					ctr = &d.Spec.Template.Spec.Containers[i]
				}
			}
			if ctr == nil {
				t.Fatal("no apiserver container")
			}
			if len(ctr.Command) > 0 {
				t.Fatalf("chart overrides the command: %v", ctr.Command)
			}
			args := make([]string, len(ctr.Args))
			for i, a := range ctr.Args {
				args[i] = expandEnv(a, ctr.Env)
				if strings.Contains(args[i], "$(") {
					t.Errorf("argument %q names an unknown env variable", a)
				}
			}
			cfg := DefaultConfig()
			fs := pflag.NewFlagSet("clustermesh-apiserver", pflag.ContinueOnError)
			fs.SetOutput(os.Stderr)
			cfg.RegisterFlags(fs)
			fs.Bool("debug", false, "") // registered by main
			if err := fs.Parse(args); err != nil {
				t.Fatalf("the binary rejects the chart's arguments %q: %v", args, err)
			}
			if fs.NArg() != 0 {
				t.Fatalf("positional arguments %v", fs.Args())
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("the chart's arguments %q: %v", args, err)
			}
			if cfg.ClusterName != "c1" || cfg.ClusterID != 3 {
				t.Errorf("cluster %s/%d, want c1/3", cfg.ClusterName, cfg.ClusterID)
			}
			if cfg.StatusNamespace != "env-pod_namespace" {
				t.Errorf("status namespace %q, want the pod's namespace", cfg.StatusNamespace)
			}
			// Every path the arguments name lies under a mount.
			paths := map[string]string{
				"remote-users-file": cfg.RemoteUsersFile, "etcd-tls-dir": cfg.EtcdTLSDir,
				"etcd-server-tls-dir": cfg.EtcdServerTLSDir, "kvstore-config": cfg.KVStoreConfig,
			}
			if cfg.KVStoreConfig == "" {
				paths["etcd-data-dir"], paths["remote-config-dir"] = cfg.EtcdDataDir, cfg.RemoteConfigDir
			}
			for flag, p := range paths {
				if p == "" {
					continue
				}
				mounted := false
				for _, m := range ctr.VolumeMounts {
					if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
						mounted = true
					}
				}
				if !mounted {
					t.Errorf("--%s=%s is on no volume mount (the root file system is read-only)", flag, p)
				}
			}
			if cfg.RemoteUsersFile == "" {
				t.Error("the chart passes no --remote-users-file")
			}
			tc.check(t, cfg)
		})
	}
}
