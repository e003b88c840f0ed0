// Package testenv decides whether a test that needs root, a kernel feature or
// the Kubernetes binaries can run here. Outside CI such a test skips with the
// reason; under CI (CI=true) and under `make test` (CLUSTERMESH_TEST_STRICT=true)
// a missing requirement fails the test instead, naming it, because those must
// run every test rather than skip it. Only `make test-unit` (-short) skips.
package testenv
