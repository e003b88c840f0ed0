# clustermesh-apiserver for users who build with Docker (from the repository root):
#   docker build -f deploy/images/apiserver.Dockerfile \
#     --build-arg VERSION=$(hack/version.sh) --build-arg COMMIT=$(hack/version.sh --commit) \
#     -t ghcr.io/clustermesh/clustermesh-apiserver:$(hack/version.sh) .
# `make images` builds the same image without a daemon (internal/ociimage);
# both put one static, stripped binary on an empty base.
FROM golang:1.26 AS build
ARG VERSION=dev
ARG COMMIT=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X github.com/clustermesh/clustermesh/internal/version.version=${VERSION} -X github.com/clustermesh/clustermesh/internal/version.commit=${COMMIT}" \
    -o /out/clustermesh-apiserver ./clustermesh-apiserver

FROM scratch
COPY --from=build /out/clustermesh-apiserver /usr/local/bin/clustermesh-apiserver
# Non-root (distroless's nonroot uid/gid), as the chart's securityContext.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clustermesh-apiserver"]
