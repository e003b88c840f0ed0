package ociimage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestBuildTwiceSameDigest compiles the echo image's binary twice from this
// module (separate output dirs) and expects identical archives: the -trimpath,
// stripped, stamped build and the fixed-time layer leave nothing machine- or
// time-dependent.
func TestBuildTwiceSameDigest(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles a binary twice")
	}
	modDir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	build := func(dir string) Built {
		t.Helper()
		b, err := Build(context.Background(), BuildConfig{
			ModDir: modDir, OutDir: dir, Version: "v0.0.0-test", Commit: "0123456789abcdef", Names: []string{"echo"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 1 {
			t.Fatalf("built %d images, want 1", len(b))
		}
		return b[0]
	}
	a, b := build(t.TempDir()), build(t.TempDir())
	if a.Digest != b.Digest {
		t.Errorf("digests differ: %s vs %s", a.Digest, b.Digest)
	}
	if a.Ref != "ghcr.io/clustermesh/clustermesh-echo:v0.0.0-test" {
		t.Errorf("ref = %q", a.Ref)
	}
	da, _ := os.ReadFile(a.Archive)
	db, _ := os.ReadFile(b.Archive)
	if len(da) == 0 || !bytes.Equal(da, db) {
		t.Errorf("archives differ (%d and %d bytes)", len(da), len(db))
	}
}

func TestSelectSpecs(t *testing.T) {
	tests := []struct {
		name    string
		names   []string
		want    []string
		wantErr bool
	}{
		{name: "default is every image", want: []string{"clustermesh-agent", "clustermesh-apiserver", "clustermesh-echo", "clustermesh-pause"}},
		{name: "short names", names: []string{"agent", "apiserver"}, want: []string{"clustermesh-agent", "clustermesh-apiserver"}},
		{name: "full name", names: []string{"clustermesh-echo"}, want: []string{"clustermesh-echo"}},
		{name: "unknown", names: []string{"nope"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := selectSpecs(tt.names)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d specs, want %v", len(got), tt.want)
			}
			for i := range got {
				if got[i].Name != tt.want[i] {
					t.Errorf("spec %d = %s, want %s", i, got[i].Name, tt.want[i])
				}
			}
		})
	}
}
