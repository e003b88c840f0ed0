package remoteconn

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseConfigFile feeds arbitrary file names and contents through the
// config-file path of the connection logic: directory read and parse. It must never
// panic, and must either return a usable config or an ErrConfigFile.
func FuzzParseConfigFile(f *testing.F) {
	const ownName = "c1"
	f.Add("c2", []byte("endpoints:\n- https://127.0.0.1:2379\ntrusted-ca-file: /ca.crt\ncert-file: /c.crt\nkey-file: /c.key\n"))
	f.Add("c2", []byte(`{"endpoints":["https://10.0.0.1:2379"],"list-page-size":10000,"dial-timeout":"3s"}`))
	f.Add("c1", []byte("endpoints: [https://x]"))
	f.Add("..data", []byte(""))
	f.Add("Bad_Name", []byte("endpoints: [a]"))
	f.Add("c3", []byte("endpoints: []"))
	f.Add("c3", []byte("endpoints: {a: b}\nqps: -1\n"))
	f.Add("c3", []byte("\x00\xff: ["))
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		cfg, err := ParseConfigFile(name, ownName, data)
		if err != nil {
			if !errors.Is(err, ErrConfigFile) {
				t.Fatalf("error %v does not wrap ErrConfigFile", err)
			}
			return
		}
		if len(cfg.Endpoints) == 0 {
			t.Fatal("accepted a config without endpoints")
		}
		if name == ownName {
			t.Fatal("accepted the own cluster's file")
		}
		// The directory path: a valid name is read back as written.
		if filepath.Base(name) != name || name == "." || name == ".." {
			return
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return
		}
		files, err := ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := files[name]; ok && string(got) != string(data) {
			t.Fatal("read back different content")
		}
	})
}
