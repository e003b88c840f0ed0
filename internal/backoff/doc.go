// Package backoff is the one retry delay of the tree: capped exponential
// with jitter, whose count restarts only after a period of health, so that
// a part that fails right after each success (a watch that breaks after
// every list) still backs off instead of retrying in a tight loop.
package backoff
