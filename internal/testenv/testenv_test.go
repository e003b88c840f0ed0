package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestUnavailableHelper is run by TestUnavailable in a child process with
// the environment under test; it does nothing on its own.
func TestUnavailableHelper(t *testing.T) {
	if os.Getenv("TESTENV_HELPER") != "1" {
		return
	}
	RequireCommand(t, "clustermesh-no-such-command")
	t.Log("requirement met")
}

func TestUnavailable(t *testing.T) {
	cases := []struct {
		name     string
		env      []string
		wantFail bool
		wantOut  string
	}{
		{name: "plain run skips", env: nil, wantFail: false, wantOut: "SKIP"},
		{name: "CI fails", env: []string{"CI=true"}, wantFail: true, wantOut: "clustermesh-no-such-command is not installed"},
		{name: "make test fails", env: []string{StrictEnv + "=true"}, wantFail: true, wantOut: "clustermesh-no-such-command is not installed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestUnavailableHelper$", "-test.v")
			env := []string{"TESTENV_HELPER=1"}
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "CI=") && !strings.HasPrefix(kv, StrictEnv+"=") {
					env = append(env, kv)
				}
			}
			cmd.Env = append(env, tc.env...)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.wantFail {
				t.Fatalf("failed = %v, want %v; output:\n%s", failed, tc.wantFail, out)
			}
			if !strings.Contains(string(out), tc.wantOut) {
				t.Fatalf("output lacks %q:\n%s", tc.wantOut, out)
			}
		})
	}
}
