// Package testwait is the tests' one way to wait for a condition: poll it
// until it holds or a deadline passes, instead of sleeping a fixed time.
package testwait
