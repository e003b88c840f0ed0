package testwait

import (
	"testing"
	"time"
)

// Poll is how often Until checks its condition.
const Poll = 10 * time.Millisecond

// Until calls cond every Poll until it returns true, and fails the test
// with what and the last detail cond gave once timeout has passed. cond
// returns whether the condition holds and, if not, what it saw.
func Until(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; last: %s", what, timeout, detail)
		}
		time.Sleep(Poll)
	}
}
