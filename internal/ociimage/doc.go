// Package ociimage writes container images as OCI image-layout archives
// without a container daemon, reproducibly: the same binaries give the same
// bytes and the same manifest digest on every machine.
//
// An image is one layer on an empty (scratch) base holding static binaries;
// every timestamp is the Unix epoch, owners are 0:0, entries are sorted and
// the gzip stream carries no name or time. The archive is what
// `ctr -n k8s.io images import`, `podman load` and `skopeo copy oci-archive:`
// read; its index names the image with the containerd
// (io.containerd.image.name) and OCI (org.opencontainers.image.ref.name)
// annotations.
//
// Build compiles the product's binaries (CGO_ENABLED=0, -trimpath,
// -s -w, version and commit stamped) and packs one archive per image; `make
// images` runs it through hack/imagebuild.
package ociimage
