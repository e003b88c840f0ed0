// Package version holds the version and commit every binary reports
// (`--version`, `clustermesh version`) and the image tag the CLI deploys.
//
// `make build` and `make images` set both at link time from hack/version.sh
// (`git describe --tags --match 'v[0-9]*' --always --dirty`):
//
//	-X github.com/clustermesh/clustermesh/internal/version.version=<describe>
//	-X github.com/clustermesh/clustermesh/internal/version.commit=<full hash>
//
// A plain `go build` falls back to the VCS data Go records in the binary.
package version
