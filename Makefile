GO ?= go

.PHONY: build run test vet

build:
	$(GO) build -o bin/relay ./cmd/relay

# Starts a local PostgreSQL under .data/ unless DATABASE_URL is set, migrates, serves.
run:
	./scripts/run.sh

# Runs every test against a throwaway PostgreSQL cluster.
test: vet
	./scripts/with-test-postgres.sh $(GO) test -race -count=1 -timeout 15m ./...

vet:
	$(GO) vet ./...
