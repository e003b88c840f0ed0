package remoteconn

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReadDirSkipsNamesWithDots(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"c2", "c2.etcd-client-ca.crt", "c2.etcd-client.crt", "c2.etcd-client.key", ".c3", "c3.tmp", "c4~"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("endpoints: [https://127.0.0.1:2]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "..data"), 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(maps.Keys(files))
	// c4~ is not a valid cluster name: it is a config file the manager
	// refuses with a reason, not one it ignores.
	if want := []string{"c2", "c4~"}; !slices.Equal(got, want) {
		t.Fatalf("config files %v, want %v", got, want)
	}
}
