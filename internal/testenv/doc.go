// Package testenv decides whether a test that needs root, a kernel feature or
// the Kubernetes binaries can run here. Outside CI such a test skips with the
// reason; under CI (CI=true) a missing requirement fails the test instead,
// because CI must run every test rather than skip it.
package testenv
