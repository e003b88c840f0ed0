package clustermesh

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/clustermesh/clustermesh"

// forbidden lists, per package prefix, import prefixes its transitive
// dependencies must not contain. Dependencies point one way: the kvstore layer
// knows neither the agent nor the apiserver nor Kubernetes; the datapath
// contract and the eBPF code know no Kubernetes client and no etcd.
var forbidden = map[string][]string{
	module + "/kvstore": {
		module + "/agent", module + "/clustermesh-apiserver", module + "/cmd", module + "/bpf",
		"k8s.io/client-go",
	},
	module + "/internal/datapath": {
		module + "/agent", module + "/clustermesh-apiserver", module + "/kvstore",
		"k8s.io/client-go", "go.etcd.io/etcd",
	},
	module + "/bpf": {
		module + "/agent", module + "/clustermesh-apiserver", module + "/kvstore",
		"k8s.io/client-go", "go.etcd.io/etcd",
	},
	// The L4 protocol type is shared by the datapath contract and the policy
	// resolver, so it may import neither.
	module + "/internal/ipproto": {
		module + "/agent", module + "/internal/datapath", module + "/kvstore", module + "/bpf",
		"k8s.io/", "go.etcd.io/etcd",
	},
	// The policy resolver is a pure library: no clients, no datapath.
	module + "/agent/internal/policy": {
		module + "/kvstore", module + "/bpf", module + "/internal/datapath",
		"k8s.io/client-go", "go.etcd.io/etcd",
	},
	// The remote connection logic shared by the agent and the kvstoremesh
	// knows neither the datapath nor the kvstoremesh's writer.
	module + "/kvstore/remoteconn": {
		module + "/internal/datapath", module + "/kvstore/syncstore", module + "/kvstore/kvstoremesh",
	},
	// The restore hold decides; it reaches the datapath only through the
	// reconciler's Holding and Release.
	module + "/agent/internal/restorehold": {
		module + "/kvstore", module + "/bpf", module + "/internal/datapath",
		"k8s.io/client-go", "go.etcd.io/etcd",
	},
	// Cilium's code is reached only through the tools/ciliuminterop binary.
	module:                            {"github.com/cilium/cilium"},
	module + "/agent":                 {module + "/clustermesh-apiserver", module + "/cmd"},
	module + "/clustermesh-apiserver": {module + "/agent", module + "/bpf", module + "/cmd"},
}

type pkgInfo struct {
	ImportPath string
	Deps       []string
}

func TestDependenciesPointOneWay(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps=false", "-json=ImportPath,Deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	checked := 0
	for dec.More() {
		var p pkgInfo
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		for owner, bans := range forbidden {
			if p.ImportPath != owner && !strings.HasPrefix(p.ImportPath, owner+"/") {
				continue
			}
			checked++
			for _, d := range p.Deps {
				for _, ban := range bans {
					if d == ban || strings.HasPrefix(d, ban+"/") {
						t.Errorf("%s depends on %s (forbidden: %s)", p.ImportPath, d, ban)
					}
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no package matched the dependency rules; the check is broken")
	}
}
