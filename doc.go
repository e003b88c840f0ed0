// Package clustermesh is the module root. It holds no code, only the tests
// that keep the tree honest: every package documented (pkgdoc_test.go) and
// dependencies pointing one way (deps_test.go). See docs/architecture.md.
package clustermesh
