package harness

import "time"

// Eventually retries f every 250 ms until it succeeds or timeout passes,
// and returns its last error. It is the e2e tests' one wait helper.
func Eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}
