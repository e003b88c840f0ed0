// Command imagebuild builds the clustermesh images as OCI archives without a
// container daemon (package internal/ociimage); `make images` runs it.
//
//	go run ./hack/imagebuild -o bin/images -version $(hack/version.sh) -commit $(hack/version.sh --commit)
package main
