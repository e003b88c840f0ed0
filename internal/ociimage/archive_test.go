package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func testImage() Image {
	return Image{
		Repository: "ghcr.io/clustermesh/test",
		Tag:        "v0.1.0-3-g1a2b3c4",
		Files:      []File{{Path: "/usr/local/bin/test", Mode: 0o755, Data: []byte("#!binary")}},
		Entrypoint: []string{"/usr/local/bin/test"},
		User:       "65532:65532",
		Labels:     map[string]string{"org.opencontainers.image.version": "v0.1.0-3-g1a2b3c4"},
	}
}

// readTar returns the regular files of a tar stream by name, failing on any
// entry whose time or owner would make a build irreproducible.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, map[string]*tar.Header) {
	t.Helper()
	files, headers := map[string][]byte{}, map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, headers
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want epoch and 0:0", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		headers[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[h.Name] = b
		}
	}
}

func blobOf(t *testing.T, files map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing from the archive", digest)
	}
	if got := newBlob(b).digest; got != digest {
		t.Fatalf("blob %s has digest %s", digest, got)
	}
	return b
}

func TestWriteIsAReadableOCIArchive(t *testing.T) {
	var buf bytes.Buffer
	digest, err := Write(&buf, testImage())
	if err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, &buf)
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", files["oci-layout"])
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	md := index.Manifests[0]
	if md.Digest != digest || md.MediaType != MediaTypeManifest {
		t.Errorf("index manifest = %+v, want digest %s", md, digest)
	}
	if got := md.Annotations[AnnotationContainerdName]; got != "ghcr.io/clustermesh/test:v0.1.0-3-g1a2b3c4" {
		t.Errorf("containerd name = %q", got)
	}
	if got := md.Annotations[AnnotationRefName]; got != "v0.1.0-3-g1a2b3c4" {
		t.Errorf("ref name = %q", got)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != "amd64" {
		t.Errorf("platform = %+v, want linux/amd64", md.Platform)
	}
	var man struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blobOf(t, files, digest), &man); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Created string `json:"created"`
		Config  struct {
			Entrypoint []string
			User       string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blobOf(t, files, man.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Created != "1970-01-01T00:00:00Z" || cfg.Config.User != "65532:65532" || cfg.Config.Entrypoint[0] != "/usr/local/bin/test" {
		t.Errorf("config = %+v", cfg)
	}
	if len(man.Layers) != 1 || man.Layers[0].MediaType != MediaTypeLayer {
		t.Fatalf("layers = %+v", man.Layers)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobOf(t, files, man.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if got := newBlob(raw).digest; len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != got {
		t.Errorf("diff_ids = %v, want [%s]", cfg.RootFS.DiffIDs, got)
	}
	lfiles, lheaders := readTar(t, bytes.NewReader(raw))
	if string(lfiles["usr/local/bin/test"]) != "#!binary" || lheaders["usr/local/bin/test"].Mode != 0o755 {
		t.Errorf("layer file = %q mode %o", lfiles["usr/local/bin/test"], lheaders["usr/local/bin/test"].Mode)
	}
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if h := lheaders[d]; h == nil || h.Typeflag != tar.TypeDir {
			t.Errorf("layer lacks directory %s", d)
		}
	}
}

func TestWriteIsReproducible(t *testing.T) {
	var a, b bytes.Buffer
	da, err := Write(&a, testImage())
	if err != nil {
		t.Fatal(err)
	}
	db, err := Write(&b, testImage())
	if err != nil {
		t.Fatal(err)
	}
	if da != db || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("two writes differ: %s vs %s", da, db)
	}
	other := testImage()
	other.Files[0].Data = []byte("#!other")
	dc, err := Write(io.Discard, other)
	if err != nil {
		t.Fatal(err)
	}
	if dc == da {
		t.Errorf("different content, same digest %s", dc)
	}
}

func TestWriteRejectsInvalidImages(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Image)
	}{
		{name: "no tag", change: func(im *Image) { im.Tag = "" }},
		{name: "tag with colon", change: func(im *Image) { im.Tag = "a:b" }},
		{name: "no repository", change: func(im *Image) { im.Repository = "" }},
		{name: "no files", change: func(im *Image) { im.Files = nil }},
		{name: "no entrypoint", change: func(im *Image) { im.Entrypoint = nil }},
		{name: "relative path", change: func(im *Image) { im.Files[0].Path = "bin/x" }},
		{name: "unclean path", change: func(im *Image) { im.Files[0].Path = "/bin/../x" }},
		{name: "same file twice", change: func(im *Image) { im.Files = append(im.Files, im.Files[0]) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im := testImage()
			tt.change(&im)
			if _, err := Write(io.Discard, im); !errors.Is(err, ErrInvalidImage) {
				t.Errorf("Write = %v, want ErrInvalidImage", err)
			}
		})
	}
}
