GO ?= go

.PHONY: build run test vet check-ops

build:
	$(GO) build -o bin/relay ./cmd/relay

# Starts a local PostgreSQL under .data/ unless DATABASE_URL is set, migrates, serves.
run:
	./scripts/run.sh

# Runs every test against a throwaway PostgreSQL cluster.
test: vet check-ops
	./scripts/with-test-postgres.sh $(GO) test -race -count=1 -timeout 15m ./...

vet:
	$(GO) vet ./...

# Checks the Prometheus config, alert rules and their unit tests; installs
# Debian's prometheus package first when promtool is missing (the end-to-end
# test in deploy/e2e runs its prometheus server too).
check-ops:
	./scripts/promtool.sh
