package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// Media types of the OCI image spec (v1.1).
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Annotations that name the image in the archive's index.
const (
	AnnotationContainerdName = "io.containerd.image.name"
	AnnotationRefName        = "org.opencontainers.image.ref.name"
)

// epoch is every timestamp in an image: the build time would make two builds
// of the same binaries differ.
var epoch = time.Unix(0, 0).UTC()

// ErrInvalidImage is returned for an image description that cannot be written.
var ErrInvalidImage = errors.New("invalid image")

// File is one regular file of the image's layer.
type File struct {
	Path string // absolute path in the image, e.g. /usr/local/bin/clustermesh-agent
	Mode int64  // permission bits, e.g. 0o755
	Data []byte
}

// Image describes one single-layer image on a scratch base.
type Image struct {
	// Repository is the image name without tag, e.g. ghcr.io/clustermesh/clustermesh-agent.
	Repository string
	// Tag is the image tag, the version of the binaries (hack/version.sh).
	Tag string
	// Files make up the only layer; directories are added for their parents.
	Files []File
	// Entrypoint is the command the image runs.
	Entrypoint []string
	// User is "uid:gid", empty for root.
	User string
	// Labels go into the image config and, as annotations, into the manifest.
	Labels map[string]string
	// OS and Architecture of the binaries (default linux/amd64).
	OS, Architecture string
}

// Ref is the image's full reference, repository:tag.
func (im Image) Ref() string { return im.Repository + ":" + im.Tag }

func (im Image) validate() error {
	switch {
	case im.Repository == "" || strings.Contains(im.Repository, ":") && !strings.Contains(im.Repository, "/"):
		return fmt.Errorf("repository %q: %w", im.Repository, ErrInvalidImage)
	case im.Tag == "" || strings.ContainsAny(im.Tag, ":/@ "):
		return fmt.Errorf("tag %q: %w", im.Tag, ErrInvalidImage)
	case len(im.Files) == 0:
		return fmt.Errorf("%s: no files: %w", im.Ref(), ErrInvalidImage)
	case len(im.Entrypoint) == 0:
		return fmt.Errorf("%s: no entrypoint: %w", im.Ref(), ErrInvalidImage)
	}
	for _, f := range im.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("%s: file path %q: %w", im.Ref(), f.Path, ErrInvalidImage)
		}
	}
	return nil
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// blob is one content-addressed object of the archive.
type blob struct {
	digest string // "sha256:<hex>"
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func (b blob) descriptor(mediaType string) descriptor {
	return descriptor{MediaType: mediaType, Digest: b.digest, Size: int64(len(b.data))}
}

// Write writes im as an OCI image-layout archive to w and returns the
// digest of its manifest, the image's digest.
func Write(w io.Writer, im Image) (string, error) {
	if err := im.validate(); err != nil {
		return "", err
	}
	if im.OS == "" {
		im.OS = "linux"
	}
	if im.Architecture == "" {
		im.Architecture = "amd64"
	}
	layerTar, err := layer(im.Files)
	if err != nil {
		return "", fmt.Errorf("write layer of %q: %w", im.Ref(), err)
	}
	diffID := newBlob(layerTar).digest
	gz, err := gzipped(layerTar)
	if err != nil {
		return "", fmt.Errorf("compress layer of %q: %w", im.Ref(), err)
	}
	layerBlob := newBlob(gz)
	cfg, err := json.Marshal(imageConfig(im, diffID))
	if err != nil {
		return "", err
	}
	cfgBlob := newBlob(cfg)
	man, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeManifest,
		"config":        cfgBlob.descriptor(MediaTypeConfig),
		"layers":        []descriptor{layerBlob.descriptor(MediaTypeLayer)},
		"annotations":   im.Labels,
	})
	if err != nil {
		return "", err
	}
	manBlob := newBlob(man)
	manDesc := manBlob.descriptor(MediaTypeManifest)
	manDesc.Platform = &platform{Architecture: im.Architecture, OS: im.OS}
	manDesc.Annotations = map[string]string{AnnotationContainerdName: im.Ref(), AnnotationRefName: im.Tag}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeIndex,
		"manifests":     []descriptor{manDesc},
	})
	if err != nil {
		return "", err
	}
	entries := []tarEntry{
		{name: "blobs/", dir: true},
		{name: "blobs/sha256/", dir: true},
		{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{name: "index.json", data: index},
	}
	for _, b := range []blob{cfgBlob, layerBlob, manBlob} {
		entries = append(entries, tarEntry{name: "blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:"), data: b.data})
	}
	if err := writeTar(w, entries, 0o644); err != nil {
		return "", fmt.Errorf("write archive of %q: %w", im.Ref(), err)
	}
	return manBlob.digest, nil
}

func imageConfig(im Image, diffID string) map[string]any {
	cfg := map[string]any{
		"Entrypoint": im.Entrypoint,
		"Env":        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		"Labels":     im.Labels,
	}
	if im.User != "" {
		cfg["User"] = im.User
	}
	return map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": im.Architecture,
		"os":           im.OS,
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history":      []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "clustermesh hack/imagebuild"}},
	}
}

// tarEntry is a file or directory of a tar stream.
type tarEntry struct {
	name string
	dir  bool
	mode int64
	data []byte
}

// layer returns the uncompressed layer: the files and every parent
// directory, sorted by path.
func layer(files []File) ([]byte, error) {
	seen := map[string]bool{}
	var entries []tarEntry
	for _, f := range files {
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			if !seen[d] {
				seen[d] = true
				entries = append(entries, tarEntry{name: strings.TrimPrefix(d, "/") + "/", dir: true, mode: 0o755})
			}
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("file %q twice: %w", f.Path, ErrInvalidImage)
		}
		seen[f.Path] = true
		entries = append(entries, tarEntry{name: strings.TrimPrefix(f.Path, "/"), mode: f.Mode, data: f.Data})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	if err := writeTar(&buf, entries, 0o644); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeTar writes entries in order with fixed owners and times; mode is used
// for entries that do not set their own.
func writeTar(w io.Writer, entries []tarEntry, mode int64) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, ModTime: epoch, Format: tar.FormatPAX, Mode: e.mode}
		if h.Mode == 0 {
			h.Mode = mode
		}
		if e.dir {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// gzipped compresses data with a header that carries no name and no time.
func gzipped(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	zw.ModTime = epoch
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
