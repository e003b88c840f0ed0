package deploy

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

const testNamespace = "clustermesh-system"

// chartCase is one set of values the chart must render and the cluster must
// accept.
type chartCase struct {
	name   string
	values map[string]any
	check  func(t *testing.T, objs objects)
}

func baseValues() map[string]any {
	return map[string]any{"cluster": map[string]any{"name": "c1", "id": 1}}
}

// with returns base values with the dotted keys set.
func with(kv ...any) map[string]any {
	v := baseValues()
	for i := 0; i < len(kv); i += 2 {
		setPath(v, kv[i].(string), kv[i+1])
	}
	return v
}

func setPath(m map[string]any, key string, val any) {
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = val
}

// objects are rendered manifests keyed by "Kind/name".
type objects map[string]*unstructured.Unstructured

func (o objects) get(t *testing.T, key string) *unstructured.Unstructured {
	t.Helper()
	u, ok := o[key]
	if !ok {
		t.Fatalf("%s not rendered; have %v", key, o.keys())
	}
	return u
}

func (o objects) keys() []string {
	var ks []string
	for k := range o {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func str(t *testing.T, u *unstructured.Unstructured, path ...string) string {
	t.Helper()
	s, _, err := unstructured.NestedString(u.Object, path...)
	if err != nil {
		t.Fatalf("%s %v: %v", u.GetName(), path, err)
	}
	return s
}

func firstContainer(t *testing.T, u *unstructured.Unstructured) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if len(cs) == 0 {
		t.Fatalf("%s has no containers", u.GetName())
	}
	return cs[0].(map[string]any)
}

func args(t *testing.T, u *unstructured.Unstructured) []string {
	t.Helper()
	var out []string
	for _, a := range firstContainer(t, u)["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

// volumeNames returns the names of a pod template's volumes.
func volumeNames(t *testing.T, u *unstructured.Unstructured) []string {
	t.Helper()
	vs, _, err := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "volumes")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		out = append(out, fmt.Sprint(v.(map[string]any)["name"]))
	}
	return out
}

// render runs `helm template` through the SDK.
func render(values map[string]any) (objects, error) {
	c, err := LoadChart()
	if err != nil {
		return nil, err
	}
	inst := action.NewInstall(&action.Configuration{})
	inst.ClientOnly, inst.DryRun, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = "clustermesh", testNamespace
	inst.KubeVersion = &chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}
	rel, err := inst.Run(c, values)
	if err != nil {
		return nil, err
	}
	objs := objects{}
	for name, doc := range releaseutil.SplitManifests(rel.Manifest) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		objs[u.GetKind()+"/"+u.GetName()] = u
	}
	return objs, nil
}

func chartCases(t *testing.T) []chartCase {
	// Supplied TLS: take certificates that the chart generated.
	gen, err := render(baseValues())
	if err != nil {
		t.Fatal(err)
	}
	pem := func(secret, key string) string {
		u := gen.get(t, "Secret/"+secret)
		b64 := str(t, u, "data", key)
		return decodeB64(t, b64)
	}
	return []chartCase{
		{name: "default", values: baseValues(), check: func(t *testing.T, o objects) {
			svc := o.get(t, "Service/clustermesh-apiserver")
			if got := str(t, svc, "spec", "type"); got != "NodePort" {
				t.Errorf("service type %q", got)
			}
			ds := o.get(t, "DaemonSet/clustermesh-agent")
			if hn, _, _ := unstructured.NestedBool(ds.Object, "spec", "template", "spec", "hostNetwork"); !hn {
				t.Error("agent is not on the host network")
			}
			if p, _, _ := unstructured.NestedBool(firstContainer(t, ds), "securityContext", "privileged"); !p {
				t.Error("agent is not privileged")
			}
			for _, want := range []string{"--cluster-name=c1", "--cluster-id=1", "--max-connected-clusters=255", "--clustermesh-config=/var/lib/clustermesh/remote-clusters", "--datapath=bpf"} {
				if !slices.Contains(args(t, ds), want) {
					t.Errorf("agent args %v lack %s", args(t, ds), want)
				}
			}
			for _, a := range args(t, ds) {
				if strings.HasPrefix(a, "--remote-") {
					t.Errorf("default values pass %s; the agent's defaults should hold", a)
				}
			}
			dep := o.get(t, "Deployment/clustermesh-apiserver")
			for _, want := range []string{"--cluster-name=c1", "--etcd-data-dir=/var/run/etcd", "--remote-users-file=/etc/clustermesh/remote-users/users.yaml"} {
				if !slices.Contains(args(t, dep), want) {
					t.Errorf("apiserver args %v lack %s", args(t, dep), want)
				}
			}
			if a := str(t, dep, "spec", "template", "metadata", "annotations", "prometheus.io/port"); a != "9962" {
				t.Errorf("prometheus.io/port %q", a)
			}
			if p, _, _ := unstructured.NestedString(firstContainer(t, dep), "readinessProbe", "httpGet", "path"); p != "/readyz" {
				t.Errorf("readiness path %q", p)
			}
			cm := o.get(t, "ConfigMap/clustermesh-config")
			if str(t, cm, "data", "cluster-id") != "1" || str(t, cm, "data", "max-connected-clusters") != "255" {
				t.Errorf("config %v", cm.Object["data"])
			}
			o.get(t, "ConfigMap/clustermesh-remote-users")
			for _, s := range []string{"clustermesh-ca", "clustermesh-apiserver-server-cert", "clustermesh-apiserver-admin-cert", "clustermesh-apiserver-local-reader-cert"} {
				o.get(t, "Secret/"+s)
			}
			// kvstoremesh on, agents in direct mode.
			if !slices.Contains(args(t, dep), "--kvstoremesh-config=/var/lib/clustermesh/remote-clusters") {
				t.Errorf("apiserver args %v lack the kvstoremesh", args(t, dep))
			}
			for _, a := range args(t, ds) {
				if strings.HasPrefix(a, "--clustermesh-cache-config") {
					t.Errorf("agent in direct mode has %s", a)
				}
			}
			// Agents read their own pods' identities from the own etcd as
			// local-reader (network policy), in direct mode too.
			for _, want := range []string{"--kvstore-config=/var/lib/clustermesh/cache/config.yaml", "--policy-default-local-cluster=true"} {
				if !slices.Contains(args(t, ds), want) {
					t.Errorf("agent args %v lack %s", args(t, ds), want)
				}
			}
			own := str(t, o.get(t, "ConfigMap/clustermesh-cache-config"), "data", "config.yaml")
			if !strings.Contains(own, "https://clustermesh-apiserver."+testNamespace+".svc:2379") || !strings.Contains(own, "cert-file: /var/lib/clustermesh/cache/tls.crt") {
				t.Errorf("own kvstore config %q", own)
			}
			if vs := volumeNames(t, ds); !slices.Contains(vs, "cache") {
				t.Errorf("agent volumes %v lack the own kvstore config", vs)
			}
			role := o.get(t, "Role/clustermesh-agent")
			if role.GetNamespace() != testNamespace {
				t.Errorf("agent role in %q", role.GetNamespace())
			}
		}},
		{name: "loadbalancer", values: with("apiserver.service.type", "LoadBalancer", "apiserver.service.annotations", map[string]any{"example.com/internal": "true"}), check: func(t *testing.T, o objects) {
			svc := o.get(t, "Service/clustermesh-apiserver")
			if str(t, svc, "spec", "type") != "LoadBalancer" || svc.GetAnnotations()["example.com/internal"] != "true" {
				t.Errorf("service %v", svc.Object)
			}
		}},
		{name: "clusterip", values: with("apiserver.service.type", "ClusterIP"), check: func(t *testing.T, o objects) {
			svc := o.get(t, "Service/clustermesh-apiserver")
			ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
			if _, ok := ports[0].(map[string]any)["nodePort"]; ok || str(t, svc, "spec", "type") != "ClusterIP" {
				t.Errorf("service %v", svc.Object["spec"])
			}
		}},
		{name: "nodeport-auto", values: with("apiserver.service.nodePort", 0, "maxConnectedClusters", 511, "cluster.id", 300)},
		{name: "external-etcd", values: with("etcd.mode", "external", "etcd.external.endpoints", []any{"https://etcd-0.example:2379", "https://etcd-1.example:2379"}, "etcd.external.tlsSecret", "my-etcd-client"), check: func(t *testing.T, o objects) {
			if _, ok := o["Service/clustermesh-apiserver"]; ok {
				t.Error("etcd service rendered with external etcd")
			}
			dep := o.get(t, "Deployment/clustermesh-apiserver")
			if !slices.Contains(args(t, dep), "--kvstore-config=/etc/clustermesh/kvstore/config.yaml") {
				t.Errorf("apiserver args %v", args(t, dep))
			}
			kv := str(t, o.get(t, "ConfigMap/clustermesh-apiserver-kvstore"), "data", "config.yaml")
			if !strings.Contains(kv, "https://etcd-1.example:2379") || !strings.Contains(kv, "trusted-ca-file:") {
				t.Errorf("kvstore config %q", kv)
			}
			if ep := str(t, o.get(t, "ConfigMap/clustermesh-config"), "data", "endpoints"); ep != "https://etcd-0.example:2379,https://etcd-1.example:2379" {
				t.Errorf("endpoints %q", ep)
			}
		}},
		{name: "tls-values", values: with(
			"tls.source", "values",
			"tls.ca.cert", pem("clustermesh-ca", "ca.crt"), "tls.ca.key", pem("clustermesh-ca", "ca.key"),
			"tls.server.cert", pem("clustermesh-apiserver-server-cert", "tls.crt"), "tls.server.key", pem("clustermesh-apiserver-server-cert", "tls.key"),
			"tls.admin.cert", pem("clustermesh-apiserver-admin-cert", "tls.crt"), "tls.admin.key", pem("clustermesh-apiserver-admin-cert", "tls.key"),
		), check: func(t *testing.T, o objects) {
			got := decodeB64(t, str(t, o.get(t, "Secret/clustermesh-ca"), "data", "ca.crt"))
			if got != pem("clustermesh-ca", "ca.crt") {
				t.Error("supplied CA not used")
			}
			// No local-reader certificate supplied: the agents get no own
			// kvstore config (and say that no policy applies to their pods).
			ds := o.get(t, "DaemonSet/clustermesh-agent")
			for _, a := range args(t, ds) {
				if strings.HasPrefix(a, "--kvstore-config") {
					t.Errorf("agent has %s without a local-reader certificate", a)
				}
			}
			if vs := volumeNames(t, ds); slices.Contains(vs, "cache") {
				t.Errorf("agent mounts the own kvstore config without a local-reader certificate: %v", vs)
			}
			if _, ok := o["ConfigMap/clustermesh-cache-config"]; ok {
				t.Error("own kvstore config rendered without a local-reader certificate")
			}
		}},
		{name: "tls-values-local-reader", values: with(
			"tls.source", "values",
			"tls.ca.cert", pem("clustermesh-ca", "ca.crt"), "tls.ca.key", pem("clustermesh-ca", "ca.key"),
			"tls.server.cert", pem("clustermesh-apiserver-server-cert", "tls.crt"), "tls.server.key", pem("clustermesh-apiserver-server-cert", "tls.key"),
			"tls.admin.cert", pem("clustermesh-apiserver-admin-cert", "tls.crt"), "tls.admin.key", pem("clustermesh-apiserver-admin-cert", "tls.key"),
			"tls.localReader.cert", pem("clustermesh-apiserver-local-reader-cert", "tls.crt"), "tls.localReader.key", pem("clustermesh-apiserver-local-reader-cert", "tls.key"),
		), check: func(t *testing.T, o objects) {
			if !slices.Contains(args(t, o.get(t, "DaemonSet/clustermesh-agent")), "--kvstore-config=/var/lib/clustermesh/cache/config.yaml") {
				t.Error("agent lacks --kvstore-config with a supplied local-reader certificate")
			}
			o.get(t, "Secret/clustermesh-apiserver-local-reader-cert")
		}},
		{name: "policy-all-clusters", values: with("agent.policy.defaultLocalCluster", false), check: func(t *testing.T, o objects) {
			if !slices.Contains(args(t, o.get(t, "DaemonSet/clustermesh-agent")), "--policy-default-local-cluster=false") {
				t.Error("agent lacks --policy-default-local-cluster=false")
			}
		}},
		{name: "agents-through-kvstoremesh", values: with("agent.connectionMode", "kvstoremesh", "kvstoremesh.staleTTL", "10m"), check: func(t *testing.T, o objects) {
			ds := o.get(t, "DaemonSet/clustermesh-agent")
			if !slices.Contains(args(t, ds), "--clustermesh-cache-config=/var/lib/clustermesh/cache/config.yaml") {
				t.Errorf("agent args %v", args(t, ds))
			}
			if !slices.Contains(args(t, o.get(t, "Deployment/clustermesh-apiserver")), "--kvstoremesh-stale-ttl=10m") {
				t.Error("apiserver lacks --kvstoremesh-stale-ttl=10m")
			}
			cfg := str(t, o.get(t, "ConfigMap/clustermesh-cache-config"), "data", "config.yaml")
			if !strings.Contains(cfg, "https://clustermesh-apiserver."+testNamespace+".svc:2379") || !strings.Contains(cfg, "cert-file: /var/lib/clustermesh/cache/tls.crt") {
				t.Errorf("cache config %q", cfg)
			}
		}},
		{name: "kvstoremesh-off", values: with("kvstoremesh.enabled", false), check: func(t *testing.T, o objects) {
			for _, a := range args(t, o.get(t, "Deployment/clustermesh-apiserver")) {
				if strings.HasPrefix(a, "--kvstoremesh") {
					t.Errorf("apiserver has %s with kvstoremesh off", a)
				}
			}
		}},
		{name: "tls-existing", values: with("tls.source", "existing"), check: func(t *testing.T, o objects) {
			if _, ok := o["Secret/clustermesh-ca"]; ok {
				t.Error("secrets rendered with tls.source=existing")
			}
		}},
		{name: "unprivileged-agent", values: with("agent.securityContext", map[string]any{"privileged": false, "capabilities": map[string]any{"add": []any{"BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"}}}), check: func(t *testing.T, o objects) {
			ds := o.get(t, "DaemonSet/clustermesh-agent")
			mounts, _, _ := unstructured.NestedSlice(firstContainer(t, ds), "volumeMounts")
			if p := mounts[0].(map[string]any)["mountPropagation"]; p != "HostToContainer" {
				t.Errorf("bpffs propagation %v", p)
			}
		}},
		{name: "remote-trust", values: with("agent.remoteTrust", map[string]any{"maxEntries": 0, "minPrefixLengthV4": 20, "allowedPrefixes": []any{"10.200.0.0/16", "fd00:200::/64"}}), check: func(t *testing.T, o objects) {
			got := args(t, o.get(t, "DaemonSet/clustermesh-agent"))
			for _, want := range []string{"--remote-max-entries=0", "--remote-min-prefix-length-v4=20", "--remote-allowed-prefixes=10.200.0.0/16,fd00:200::/64"} {
				if !slices.Contains(got, want) {
					t.Errorf("agent args %v lack %s", got, want)
				}
			}
			for _, a := range got {
				if strings.HasPrefix(a, "--remote-min-prefix-length-v6") {
					t.Errorf("unset minPrefixLengthV6 passed as %s", a)
				}
			}
		}},
		{name: "cluster-cidrs", values: with("agent.clusterCIDRs", []any{"10.244.0.0/16", "fd00:10:244::/56"}), check: func(t *testing.T, o objects) {
			if got := args(t, o.get(t, "DaemonSet/clustermesh-agent")); !slices.Contains(got, "--cluster-cidrs=10.244.0.0/16,fd00:10:244::/56") {
				t.Errorf("agent args %v lack --cluster-cidrs", got)
			}
		}},
		{name: "coexist-services-global", values: with("agent.coexistServices", "global"), check: func(t *testing.T, o objects) {
			if got := args(t, o.get(t, "DaemonSet/clustermesh-agent")); !slices.Contains(got, "--coexist-services=global") {
				t.Errorf("agent args %v lack --coexist-services=global", got)
			}
		}},
		{name: "memory-datapath-no-metrics", values: with("agent.datapath", "memory", "apiserver.metricsPort", 0, "tls.serverSANs", []any{"192.0.2.10", "mesh.example.com"}), check: func(t *testing.T, o objects) {
			if _, ok := o["Service/clustermesh-apiserver-metrics"]; ok {
				t.Error("metrics service rendered with metricsPort 0")
			}
		}},
	}
}

func TestTemplate(t *testing.T) {
	for _, tc := range chartCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := render(tc.values)
			if err != nil {
				t.Fatal(err)
			}
			for k, u := range objs {
				if u.GetLabels()["app.kubernetes.io/part-of"] != "clustermesh" {
					t.Errorf("%s lacks the part-of label", k)
				}
				if ns := u.GetNamespace(); ns != "" && ns != testNamespace {
					t.Errorf("%s in namespace %q", k, ns)
				}
			}
			if tc.check != nil {
				tc.check(t, objs)
			}
		})
	}
}

func TestTemplateRefusesInvalidValues(t *testing.T) {
	cases := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"no-name", map[string]any{"cluster": map[string]any{"id": 1}}, "cluster.name must be set"},
		{"id-zero", with("cluster.id", 0), "cluster.id must be between 1 and 255"},
		{"id-too-big", with("cluster.id", 256), "cluster.id must be between 1 and 255"},
		{"default-name", with("cluster.name", "default"), "reserved"},
		{"long-name", with("cluster.name", strings.Repeat("a", 33)), "at most 32"},
		{"max-connected", with("maxConnectedClusters", 300), "255 or 511"},
		{"service-type", with("apiserver.service.type", "ExternalName"), "apiserver.service.type"},
		{"external-no-endpoints", with("etcd.mode", "external"), "etcd.external.endpoints"},
		{"tls-values-missing", with("tls.source", "values"), "tls.source values needs"},
		{"datapath", with("agent.datapath", "xdp"), "agent.datapath"},
		{"connection-mode", with("agent.connectionMode", "mesh"), "agent.connectionMode must be"},
		{"cache-without-kvstoremesh", with("agent.connectionMode", "kvstoremesh", "kvstoremesh.enabled", false), "needs kvstoremesh.enabled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLint(t *testing.T) {
	for _, tc := range chartCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			res := lint.All("charts/"+ChartName, tc.values, testNamespace, false)
			for _, m := range res.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %s", m)
				}
			}
		})
	}
}
