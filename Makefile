GO ?= go

.PHONY: build run test test-deps vet check-ops bench fuzz soak

build:
	$(GO) build -o bin/relay ./cmd/relay

# Starts a local PostgreSQL under .data/ unless DATABASE_URL is set, migrates, serves.
run:
	./scripts/run.sh

FAULT_FIGURES ?= $(or $(TMPDIR),/tmp)/relay-fault-figures.txt

# Runs every test against a throwaway PostgreSQL cluster (the fault suite
# in faults/ starts its own), then prints what the fault suite proved.
test: vet check-ops test-deps
	rm -f $(FAULT_FIGURES)
	RELAY_FAULT_REPORT=$(FAULT_FIGURES) ./scripts/with-test-postgres.sh $(GO) test -race -count=1 -timeout 15m ./...
	@echo "fault suite:" && cat $(FAULT_FIGURES)

# The fault suite with RELAY_FAULT_SCALE times the load.
SOAK_SCALE ?= 10
soak:
	RELAY_FAULT_SCALE=$(SOAK_SCALE) RELAY_FAULT_REPORT=$(FAULT_FIGURES) $(GO) test -count=1 -timeout 60m ./faults/
	@cat $(FAULT_FIGURES)

vet:
	$(GO) vet ./...

# What the tests run besides PostgreSQL: PgBouncer (cmd/relay's
# transaction-pooling test starts one), chromium (the console's browser
# test), and Patroni with etcd (the fault suite's HA cluster); as root,
# Debian's packages are installed when they are missing.
test-deps:
	./scripts/apt-install.sh pgbouncer chromium patroni etcd-server

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
	$(GO) test -run='^$$' -fuzz='^FuzzParseEnvelope$$' -fuzztime=$(FUZZTIME) ./polar/

# Measures relay against the pgbench ceiling of its own transaction on a
# throwaway PostgreSQL with default durability; writes bench/RESULTS.md.
# BENCH_ARGS go to the harness (go run ./bench -h), e.g. -relay-env KEY=VALUE.
bench:
	GO=$(GO) ./scripts/bench.sh $(BENCH_ARGS)
