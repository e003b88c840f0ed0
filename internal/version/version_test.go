package version

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	tests := []struct {
		name            string
		version, commit string
		want            string
		stamped         bool
	}{
		{name: "stamped release", version: "v0.1.0", commit: "1a2b3c", want: "v0.1.0 (commit 1a2b3c)", stamped: true},
		{name: "stamped dev build", version: "v0.1.0-3-g1a2b3c4-dirty", commit: "1a2b3c4", want: "v0.1.0-3-g1a2b3c4-dirty (commit 1a2b3c4)", stamped: true},
		{name: "not stamped", want: "dev (commit "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oldV, oldC := version, commit
			t.Cleanup(func() { version, commit = oldV, oldC })
			version, commit = tt.version, tt.commit
			got := String()
			if tt.stamped && got != tt.want || !strings.HasPrefix(got, tt.want) {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if Stamped() != tt.stamped {
				t.Errorf("Stamped() = %v, want %v", Stamped(), tt.stamped)
			}
		})
	}
}
