# ReJot developer commands. `make demo` and `make test` are all a new user needs.
GO      ?= go
BIN     := bin/rejot
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build test demo bench fuzz vet fmt deps clean image image-context

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/rejot

# The whole suite: unit tests, end-to-end tests against throwaway Postgres
# clusters, and every fuzz target's committed seed corpus; then the
# data-path suites again with the event log on a three-node JetStream
# cluster (in-process, one per test). TestJoinWorkloadSurvivesKills adds
# about 35 s there (its load runs about 5 s, the targets converge in seconds).
NATS_SUITES := TestSubscriptionTypeMatrix|TestRandomWorkloadConverges|TestSubscriptionSurvivesCrashes|TestSubscribersMoveAtTheirOwnSpeed|TestSubscribeAppliesTransactionsLargerThanASpan|TestNATSLogSurvivesANodeAndSidecarKills|TestJoinProjection|TestJoinWorkloadSurvivesKills
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...
	REJOT_TEST_LOG=nats $(GO) test -count=1 -timeout 10m ./tests -run '^($(NATS_SUITES))$$'

vet:
	@test -z "$$(gofmt -l .)" || (echo "gofmt needed:"; gofmt -l .; exit 1)
	$(GO) vet ./...

demo: build
	$(BIN) demo

# Proxy throughput (pgbench -S direct vs. the sidecar vs. PgBouncer), then
# capture throughput (vs. pgoutput decoding alone; -bench Capture also runs
# BenchmarkJoinCapture: join versions against one table, and fan-out).
bench: build
	scripts/bench-proxy.sh
	$(GO) test ./replicator/capture -run '^$$' -bench Capture -benchtime 1x -v
	$(GO) test ./tests/bench -run '^$$' -bench Replication -benchtime 1x -timeout 60m -v
	$(GO) test ./tests/bench -run '^$$' -bench LogFanOut -benchtime 1x -timeout 30m -v
	$(GO) test ./tests/bench -run '^$$' -bench '^BenchmarkFanOut$$' -benchtime 1x -timeout 60m -v

# Run each fuzz target for FUZZTIME (default 30s); new crashers land in testdata.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./sql -run '^$$' -fuzz FuzzSplit -fuzztime $(FUZZTIME)
	$(GO) test ./sql -run '^$$' -fuzz FuzzMentionsRejot -fuzztime $(FUZZTIME)
	$(GO) test ./sql -run '^$$' -fuzz FuzzMentionsDDL -fuzztime $(FUZZTIME)
	$(GO) test ./sql -run '^$$' -fuzz FuzzAnalyzeProjection -fuzztime $(FUZZTIME)
	$(GO) test ./sql -run '^$$' -fuzz FuzzAnalyzeJoin -fuzztime $(FUZZTIME)
	$(GO) test ./sql -run '^$$' -fuzz FuzzRewriteRelations -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzStartup -fuzztime $(FUZZTIME) -fuzzminimizetime 50x
	$(GO) test ./proxy -run '^$$' -fuzz FuzzFrontendMessages -fuzztime $(FUZZTIME) -fuzzminimizetime 50x
	$(GO) test ./replicator/apply -run '^$$' -fuzz FuzzTargetStatements -fuzztime $(FUZZTIME) -fuzzminimizetime 50x

# The sidecar's OCI image, built from the Dockerfile by buildah: no daemon,
# nothing pulled. The binary is linked statically (cgo for pg_query; Go's
# own DNS resolver and user lookup, so nothing of glibc is loaded at run
# time), the base is scratch. IMAGE names the result.
IMAGE         ?= rejot:$(VERSION)
IMAGE_CONTEXT ?= bin/image

image-context:
	rm -rf $(IMAGE_CONTEXT)
	mkdir -p $(IMAGE_CONTEXT)/etc/ssl/certs
	CGO_ENABLED=1 $(GO) build -tags netgo,osusergo \
		-ldflags "$(LDFLAGS) -s -w -linkmode external -extldflags -static" \
		-o $(IMAGE_CONTEXT)/rejot ./cmd/rejot
	cp /etc/ssl/certs/ca-certificates.crt $(IMAGE_CONTEXT)/etc/ssl/certs/
	printf 'rejot:x:10001:10001:ReJot sidecar:/:/sbin/nologin\n' > $(IMAGE_CONTEXT)/etc/passwd
	printf 'rejot:x:10001:\n' > $(IMAGE_CONTEXT)/etc/group

image: image-context
	buildah bud --layers --pull=never -f Dockerfile -t $(IMAGE) $(IMAGE_CONTEXT)

# Install what builds and tests need on a Debian machine (CI runs this).
deps:
	scripts/install-deps.sh

fmt:
	gofmt -w .

clean:
	rm -rf bin
