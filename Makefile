# Clustermesh build, test and demo entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...
FUZZTIME ?= 60s
TEST_TIMEOUT ?= 30m
# The version every binary and image carries (see internal/version).
VERSION ?= $(shell hack/version.sh)
COMMIT ?= $(shell hack/version.sh --commit)
LDFLAGS := -X github.com/clustermesh/clustermesh/internal/version.version=$(VERSION) -X github.com/clustermesh/clustermesh/internal/version.commit=$(COMMIT)

CILIUM_INTEROP := $(abspath $(BIN))/ciliuminterop

.PHONY: help build images setup test test-install test-unit test-e2e lint verify-gen generate fuzz bench bench-peer bench-scale cilium-watch soak demo kube-bins ciliuminterop clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build every binary into bin/
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/clustermesh-apiserver ./clustermesh-apiserver
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/clustermesh-agent ./agent
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/clustermesh ./cmd/clustermesh

images: ## build the agent and apiserver images as OCI archives into bin/images/ (no Docker needed)
	$(GO) run ./hack/imagebuild -o $(BIN)/images -version $(VERSION) -commit $(COMMIT)

setup: ## install the Debian packages tests and demo need (as root; says what it installs)
	@hack/setup.sh

kube-bins: ## build the Kubernetes binaries of the tests (apiserver, controller-manager, scheduler, kubelet, kube-proxy; cached)
	@hack/kube-bins.sh

ciliuminterop: ## build the Cilium 1.18 interop tool (separate module tools/ciliuminterop; cold: a few minutes)
	cd tools/ciliuminterop && $(GO) build -o $(CILIUM_INTEROP) .

test: setup ciliuminterop ## run every test: unit, real etcd, real kube-apiserver, eBPF (as root), Cilium interop and e2e; a missing requirement fails
	KUBE_BIN_DIR=$$(hack/kube-bins.sh) && export KUBE_BIN_DIR CLUSTERMESH_TEST_STRICT=true && export CILIUM_INTEROP_BIN=$(CILIUM_INTEROP) && \
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS) && \
	if [ -d e2e ]; then $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -tags e2e ./e2e/...; fi

test-install: setup ## only the install test on real kubelets (containerd, kubelet, kube-proxy; the chart and images; also part of make test)
	KUBE_BIN_DIR=$$(hack/kube-bins.sh) && export KUBE_BIN_DIR CLUSTERMESH_TEST_STRICT=true && \
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -tags e2e -run '^TestInstallOnKubelets$$' -v ./e2e/

test-unit: ## run the tests that need neither root nor Kubernetes binaries (the others skip)
	$(GO) test -count=1 -short $(PKGS)

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	if [ -d e2e ]; then $(GO) vet -tags e2e ./e2e/...; fi
	cd tools/ciliuminterop && $(GO) vet ./...
	$(GO) tool staticcheck $(PKGS)

generate: ## regenerate bpf2go bindings and protobuf code
	hack/generate.sh

verify-gen: ## regenerate and fail if the committed generated code differs
	hack/generate.sh --verify

fuzz: ## run every fuzz target for FUZZTIME each
	hack/fuzz.sh $(FUZZTIME)

CILIUM_WATCH_SRC ?= ../shared/tools/cilium-watch
bench: cilium-watch ## run the benchmarks of bench/ (see bench/README.md; as root for the eBPF datapath)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/clustermesh-agent ./agent
	KUBE_BIN_DIR=$${KUBE_BIN_DIR:-$$(hack/kube-bins.sh)} && export KUBE_BIN_DIR && \
	CLUSTERMESH_AGENT_BIN=$(CURDIR)/$(BIN)/clustermesh-agent $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/...
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./agent/internal/policy/ ./agent/internal/policysync/

bench-peer: cilium-watch ## only the side-by-side benchmark against Cilium's watch path (bench/peer; as root: the agent binary on eBPF, see bench/README.md)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/clustermesh-agent ./agent
	KUBE_BIN_DIR=$${KUBE_BIN_DIR:-$$(hack/kube-bins.sh)} && export KUBE_BIN_DIR && \
	CLUSTERMESH_AGENT_BIN=$(CURDIR)/$(BIN)/clustermesh-agent $(GO) test -run '^$$' -bench VsCilium -benchtime 1x -timeout 30m -v ./bench/peer/

SCALE_BENCH ?= Scale
bench-scale: ## Cilium's clustermesh scale test on one machine (bench/scale: the agent binary at 250 clusters, the 500-watcher fan-out; as root: see bench/README.md)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/clustermesh-agent ./agent
	CLUSTERMESH_AGENT_BIN=$(CURDIR)/$(BIN)/clustermesh-agent $(GO) test -run '^$$' -bench '$(SCALE_BENCH)' -benchtime 1x -timeout 60m -v ./bench/scale/

cilium-watch: ## build Cilium's watch-path peer tool into bin/ when its source is present (else bench/peer skips the Cilium side)
	@if [ -d "$(CILIUM_WATCH_SRC)" ]; then \
		(cd "$(CILIUM_WATCH_SRC)" && $(GO) build -o "$(CURDIR)/bin/cilium-watch" .) || echo "cilium-watch not built: bench/peer skips the Cilium side"; \
	else echo "no $(CILIUM_WATCH_SRC): bench/peer skips the Cilium side"; fi

SOAK_RUNS ?= 1000
SOAK_SEED ?= 1000
SOAK_ARGS ?=
SOAK_LOG ?= /tmp/clustermesh-soak.log
soak: ## randomized fault runs against a real etcd (SOAK_RUNS, default 1000; SOAK_ARGS=-model.bpf for the eBPF datapath, as root): stale/missing entries, RSS, goroutines; every run's line in SOAK_LOG
	set -o pipefail; $(GO) test -count=1 -timeout 180m -run '^TestModelRandomized$$' -v ./agent/internal/remotecluster/ \
		-args -model.runs=$(SOAK_RUNS) -model.seed=$(SOAK_SEED) $(SOAK_ARGS) | tee $(SOAK_LOG) | grep -vE '^=== RUN|: run [0-9]+: .* converged in'

demo: ## bring up three meshed clusters and a global service (needs root)
	hack/demo.sh

clean:
	rm -rf $(BIN)
