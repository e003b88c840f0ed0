package ociimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Repository is where the chart's default images live (values.yaml
// agent.image.repository and apiserver.image.repository).
const Repository = "ghcr.io/clustermesh"

// nonRoot is the distroless "nonroot" user the apiserver's Deployment runs as.
const nonRoot = "65532:65532"

// Spec says how one image is made from a main package of this module.
type Spec struct {
	Name    string // image name under Repository and binary name
	Package string // main package, relative to the module root
	User    string // "uid:gid", empty for root
	InChart bool   // deployed by the chart (the others serve tests)
}

// Specs are the images `make images` builds. The agent runs as root: it
// loads BPF programs, attaches them and creates devices (CAP_BPF,
// CAP_NET_ADMIN, CAP_SYS_ADMIN for bpffs), which the chart grants with a
// privileged container. The echo image (the test pods' server, e2e/cmd/echo)
// and the pause image (the pod sandbox, e2e/cmd/pause) serve the install
// test on real kubelets (e2e/kubenode).
var Specs = []Spec{
	{Name: "clustermesh-agent", Package: "./agent", InChart: true},
	{Name: "clustermesh-apiserver", Package: "./clustermesh-apiserver", User: nonRoot, InChart: true},
	{Name: "clustermesh-echo", Package: "./e2e/cmd/echo", User: nonRoot},
	{Name: "clustermesh-pause", Package: "./e2e/cmd/pause", User: nonRoot},
}

// BuildConfig says what Build builds and where.
type BuildConfig struct {
	ModDir  string // module root
	OutDir  string // gets <name>.tar per image
	Version string // image tag and version.version (hack/version.sh)
	Commit  string // version.commit
	Names   []string
	GOARCH  string // default amd64
}

// Built is one written archive.
type Built struct {
	Spec
	Ref     string // repository:tag
	Archive string // path of the OCI archive
	Digest  string // manifest digest
}

// Build compiles each named image's binary statically and stripped, with the
// version stamped, and writes its OCI archive into cfg.OutDir.
func Build(ctx context.Context, cfg BuildConfig) ([]Built, error) {
	if cfg.GOARCH == "" {
		cfg.GOARCH = "amd64"
	}
	if cfg.Version == "" || cfg.Commit == "" {
		return nil, fmt.Errorf("version %q, commit %q: %w", cfg.Version, cfg.Commit, ErrInvalidImage)
	}
	specs, err := selectSpecs(cfg.Names)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	binDir, err := os.MkdirTemp("", "imagebuild-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(binDir)
	var out []Built
	for _, s := range specs {
		bin := filepath.Join(binDir, s.Name)
		if err := goBuild(ctx, cfg, s.Package, bin); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		im := Image{
			Repository:   path.Join(Repository, s.Name),
			Tag:          cfg.Version,
			Files:        []File{{Path: "/usr/local/bin/" + s.Name, Mode: 0o755, Data: data}},
			Entrypoint:   []string{"/usr/local/bin/" + s.Name},
			User:         s.User,
			Architecture: cfg.GOARCH,
			Labels: map[string]string{
				"org.opencontainers.image.title":    s.Name,
				"org.opencontainers.image.version":  cfg.Version,
				"org.opencontainers.image.revision": cfg.Commit,
				"org.opencontainers.image.source":   "https://github.com/clustermesh/clustermesh",
			},
		}
		b := Built{Spec: s, Ref: im.Ref(), Archive: filepath.Join(cfg.OutDir, s.Name+".tar")}
		if b.Digest, err = writeFile(b.Archive, im); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func selectSpecs(names []string) ([]Spec, error) {
	if len(names) == 0 {
		return Specs, nil
	}
	var out []Spec
	for _, n := range names {
		found := false
		for _, s := range Specs {
			if s.Name == n || strings.TrimPrefix(s.Name, "clustermesh-") == n {
				out, found = append(out, s), true
			}
		}
		if !found {
			return nil, fmt.Errorf("image %q: %w", n, ErrInvalidImage)
		}
	}
	return out, nil
}

// LDFlags are the linker flags of every release binary: stripped, version
// and commit stamped into internal/version.
func LDFlags(version, commit string) string {
	const pkg = "github.com/clustermesh/clustermesh/internal/version"
	return "-s -w -X " + pkg + ".version=" + version + " -X " + pkg + ".commit=" + commit
}

func goBuild(ctx context.Context, cfg BuildConfig, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", LDFlags(cfg.Version, cfg.Commit), "-o", out, pkg)
	cmd.Dir = cfg.ModDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+cfg.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %q: %w\n%s", pkg, err, b)
	}
	return nil
}

func writeFile(name string, im Image) (string, error) {
	tmp := name + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	digest, err := Write(f, im)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %q: %w", name, err)
	}
	return digest, nil
}
