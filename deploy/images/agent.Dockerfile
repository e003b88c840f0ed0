# clustermesh-agent for users who build with Docker (from the repository root):
#   docker build -f deploy/images/agent.Dockerfile \
#     --build-arg VERSION=$(hack/version.sh) --build-arg COMMIT=$(hack/version.sh --commit) \
#     -t ghcr.io/clustermesh/clustermesh-agent:$(hack/version.sh) .
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
    -o /out/clustermesh-agent ./agent

FROM scratch
COPY --from=build /out/clustermesh-agent /usr/local/bin/clustermesh-agent
# The agent runs as root: it loads and attaches BPF programs and creates its
# tunnel device (the chart runs it privileged).

ENTRYPOINT ["/usr/local/bin/clustermesh-agent"]
