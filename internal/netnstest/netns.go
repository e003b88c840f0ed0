package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/clustermesh/clustermesh/internal/netns"
)

// NS is a named network namespace (as created by `ip netns add`).
type NS = netns.NS

// NewNS creates the namespace cmt-<name> and deletes it at cleanup, killing
// whatever still runs in it.
func NewNS(t testing.TB, name string) *NS {
	t.Helper()
	n, err := netns.Add("cmt-" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Remove)
	return n
}

// RandomID returns a short random id for names unique to one test run.
func RandomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
