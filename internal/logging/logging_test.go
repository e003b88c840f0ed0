package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		value   string
		wantErr bool
		check   func(string) bool
	}{
		{name: "json", value: "json", check: func(out string) bool {
			var m map[string]any
			return json.Unmarshal([]byte(out), &m) == nil && m["msg"] == "hello" && m["k"] == "v"
		}},
		{name: "text", value: "text", check: func(out string) bool {
			return strings.Contains(out, "msg=hello") && strings.Contains(out, "k=v")
		}},
		{name: "unknown", value: "xml", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := Text
			err := f.Set(tc.value)
			if tc.wantErr {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("Set(%q) = %v, want ErrFormat", tc.value, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			New(&buf, f, slog.LevelInfo).Info("hello", "k", "v")
			if !tc.check(buf.String()) {
				t.Errorf("%s output: %q", tc.value, buf.String())
			}
		})
	}
}
