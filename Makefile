# Clustermesh build, test and demo entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...
FUZZTIME ?= 60s
TEST_TIMEOUT ?= 30m

.PHONY: help build test test-unit test-e2e lint verify-gen generate fuzz bench soak demo kube-bins clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build every binary into bin/
	$(GO) build -o $(BIN)/clustermesh-apiserver ./clustermesh-apiserver
	$(GO) build -o $(BIN)/clustermesh-agent ./agent
	$(GO) build -o $(BIN)/clustermesh ./cmd/clustermesh

kube-bins: ## build kube-apiserver and kube-controller-manager (cached)
	@hack/kube-bins.sh

test: ## run every test: unit, real etcd, real kube-apiserver, eBPF (as root) and e2e
	KUBE_BIN_DIR=$$(hack/kube-bins.sh) && export KUBE_BIN_DIR && \
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS) && \
	if [ -d e2e ]; then $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -tags e2e ./e2e/...; fi

test-unit: ## run the tests that need neither root nor Kubernetes binaries
	$(GO) test -count=1 -short $(PKGS)

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	if [ -d e2e ]; then $(GO) vet -tags e2e ./e2e/...; fi
	$(GO) tool staticcheck $(PKGS)

generate: ## regenerate bpf2go bindings and protobuf code
	hack/generate.sh

verify-gen: ## regenerate and fail if the committed generated code differs
	hack/generate.sh --verify

fuzz: ## run every fuzz target for FUZZTIME each
	hack/fuzz.sh $(FUZZTIME)

bench: ## run the benchmarks of bench/ (see bench/README.md)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/...

SOAK_RUNS ?= 1000
SOAK_SEED ?= 1000
SOAK_ARGS ?=
soak: ## randomized fault runs against a real etcd (SOAK_RUNS, default 1000; SOAK_ARGS=-model.bpf for the eBPF datapath, as root): stale/missing entries, RSS, goroutines
	set -o pipefail; $(GO) test -count=1 -timeout 180m -run '^TestModelRandomized$$' -v ./agent/internal/remotecluster/ \
		-args -model.runs=$(SOAK_RUNS) -model.seed=$(SOAK_SEED) $(SOAK_ARGS) | grep -E 'model:|seed [0-9]+ \(|^(ok|FAIL|---)'

demo: ## bring up three meshed clusters and a global service (needs root)
	hack/demo.sh

clean:
	rm -rf $(BIN)
