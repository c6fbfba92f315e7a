package main

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/polarfake"
	"github.com/relayhq/relay/polarapi"
)

// reconcileOrders is how many storefront orders the reconciliation pass
// reads: paid at Polar within the lookback, none delivered as a webhook.
const reconcileOrders = 10_000

// reconcileAckRate is the webhooks a second relay acknowledges meanwhile.
const reconcileAckRate = 200

var recoveredRE = regexp.MustCompile(`(?m)^booked .*-> recovered`)

// reconcilePhase measures one reconciliation pass (relay reconcile, default
// settings: RELAY_POLAR_API_RPM=60) over 10,000 paid orders at a fake of
// Polar's API that no webhook brought, each recovered through the inbox, a
// job and relay serve's workers; its time, its requests, and the acks of
// webhooks relay serve takes meanwhile (open loop).
func reconcilePhase(ctx context.Context, o options, pool *pgxpool.Pool, cpu *cpuMeter, gen *generator, rep *report) error {
	if err := resetTables(ctx, pool); err != nil {
		return err
	}
	if err := pauseQueue(ctx, pool, false); err != nil {
		return err
	}
	fake := polarfake.New(polarapi.Production)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	org := fake.AddOrganization()
	token := fake.AddToken(org)

	var ws, wallet string
	if err := pool.QueryRow(ctx, `INSERT INTO workspaces (name) VALUES ('Bench reconciled shop') RETURNING id::text`).Scan(&ws); err != nil {
		return fmt.Errorf("seed reconciliation: %w", err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO workspace_wallets (ws_id, name, currency) VALUES ($1, 'Main', 'USD') RETURNING id::text`, ws).Scan(&wallet); err != nil {
		return fmt.Errorf("seed reconciliation: %w", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, ws, wallet); err != nil {
		return fmt.Errorf("seed reconciliation: %w", err)
	}
	log.Printf("seeding %d checkout sessions and their paid orders at a fake of Polar's API", reconcileOrders)
	rows, err := pool.Query(ctx, `
		INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id, polar_environment)
		SELECT $1, 'reserved', 4950, 'usd', 'chk_rec_' || g, 'production' FROM generate_series(1, $2::int) g
		RETURNING id::text, polar_checkout_id`, ws, reconcileOrders)
	if err != nil {
		return fmt.Errorf("seed reconciliation: %w", err)
	}
	now := time.Now()
	orders := make([]polarfake.Order, 0, reconcileOrders)
	for rows.Next() {
		var id, checkout string
		if err := rows.Scan(&id, &checkout); err != nil {
			return err
		}
		// Spread over the 72-hour lookback, oldest first: one every 25 s.
		at := now.Add(-71 * time.Hour).Add(time.Duration(len(orders)) * 25 * time.Second)
		orders = append(orders, polarfake.Order{ID: fmt.Sprintf("ord_rec_%06d", len(orders)), CreatedAt: at, CheckoutID: checkout,
			Metadata: map[string]any{"kind": "inventory_checkout", "checkoutId": id, "wsId": ws, "environment": "production"}})
	}
	if err := rows.Err(); err != nil {
		return err
	}
	fake.AddOrders(org, orders...)

	// relay serve: its first periodic pass, at start, must find no
	// connection, so that the pass measured is the only one.
	r, err := startRelay(ctx, o, "reconciliation", map[string]string{
		"RELAY_POLAR_API_URL": srv.URL, "RELAY_RECONCILE_INTERVAL": "24h",
	})
	if err != nil {
		return err
	}
	defer r.stop()
	for deadline := time.Now().Add(60 * time.Second); ; {
		var done bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM river_job WHERE kind = 'reconcile_polar' AND state = 'completed')`).Scan(&done); err != nil {
			return err
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay serve ran no reconciliation pass within 60 s of start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	keys, err := endpoints.ParseKeyring(func(k string) string {
		if k == endpoints.EnvKey {
			return benchSecretsKey
		}
		return ""
	})
	if err != nil {
		return err
	}
	if _, err := connections.NewStore(pool, keys).Put(ctx, ws, polarapi.Production, token, org, connections.Endpoint{}); err != nil {
		return fmt.Errorf("seed the connection: %w", err)
	}

	// The pass (relay reconcile, its own process) and, meanwhile, webhooks.
	cmd := exec.CommandContext(ctx, o.relayBin, "reconcile", "--workspace", ws, "--environment", polarapi.Production)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "RELAY_") && !strings.HasPrefix(k, "POLAR_") && k != "DATABASE_URL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "DATABASE_URL="+o.dbURL, "RELAY_SECRETS_KEY="+benchSecretsKey, "RELAY_POLAR_API_URL="+srv.URL)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	gen.reset(r.webhookURL)
	type passResult struct {
		took time.Duration
		err  error
	}
	passDone := make(chan passResult, 1)
	requests0 := fake.Requests("")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start relay reconcile: %w", err)
	}
	go func() { err := cmd.Wait(); passDone <- passResult{time.Since(start), err} }()
	// The default budget (60 requests a minute) spreads the pass's ~105
	// requests over a little more than a minute: the acks run that long.
	ackRow, err := measure(ctx, pool, cpu, r, fmt.Sprintf("relay open loop %d/s during a reconciliation pass (%d orders recovered by relay serve's workers)", reconcileAckRate, reconcileOrders), func() (*loadResult, error) {
		return gen.open(ctx, reconcileAckRate, 70*time.Second, "reconcile")
	})
	if err != nil {
		return err
	}
	res := <-passDone
	if res.err != nil {
		return fmt.Errorf("relay reconcile: %w\n%s", res.err, lastBytes(out.String(), 2000))
	}
	requests := fake.Requests("") - requests0
	recovered := len(recoveredRE.FindAllString(out.String(), -1))
	var stored int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE source = 'reconciliation'`).Scan(&stored); err != nil {
		return err
	}
	rep.add(row{
		Name: fmt.Sprintf("reconciliation pass over %d orders (relay reconcile, RELAY_POLAR_API_RPM=60 default): %s, %d requests to Polar, %d recovered (%d inbox rows)",
			reconcileOrders, res.took.Round(100*time.Millisecond), requests, recovered, stored),
		Rate: float64(reconcileOrders) / res.took.Seconds(), Count: reconcileOrders, Max: res.took,
	})
	rep.add(ackRow)
	log.Printf("  reconciliation pass: %s, %d requests, %d recovered", res.took.Round(100*time.Millisecond), requests, recovered)
	if recovered != reconcileOrders || stored != reconcileOrders {
		return fmt.Errorf("reconciliation recovered %d and stored %d of %d orders", recovered, stored, reconcileOrders)
	}
	return nil
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
