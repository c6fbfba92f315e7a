GO ?= go

.PHONY: build run test vet check-ops bench fuzz

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

FUZZTIME ?= 30s

# Fuzzes signature verification and event parsing for FUZZTIME each.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzVerify$$' -fuzztime=$(FUZZTIME) ./polar/
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./polar/

# Measures relay against the pgbench ceiling of its own transaction on a
# throwaway PostgreSQL with default durability; writes bench/RESULTS.md.
bench:
	GO=$(GO) ./scripts/bench.sh
