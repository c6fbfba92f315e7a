package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/reconcile"
)

const reconcileUsage = `usage:
  relay reconcile --workspace WS --environment production|sandbox [--since 72h] [--dry-run] [--json]

Runs one reconciliation pass of the workspace's Polar connection now: lists
the storefront orders created and the refunds made within --since
(RELAY_RECONCILE_LOOKBACK by default), recovers what no webhook brought
through the inbox (source reconciliation) and the workers of relay serve,
reports what relay must not fix by itself, and checks relay's endpoint at
Polar. Prints every finding, one a line. --dry-run changes nothing.
`

// newReconciler is what relay serve's periodic pass, the admin API and
// relay reconcile reconcile with. Its recoveries' jobs are inserted by an
// insert-only River client: relay serve's workers run them.
func newReconciler(cfg *config, pool *pgxpool.Pool, connector *connections.Connector, metrics *reconcile.Metrics, logger *slog.Logger) (*reconcile.Reconciler, error) {
	inserter, err := river.NewClient(riverpgxv5.New(pool), &river.Config{MaxAttempts: cfg.MaxAttempts})
	if err != nil {
		return nil, fmt.Errorf("create river client: %w", err)
	}
	return reconcile.New(reconcile.Config{
		Pool: pool, Connections: connector.Store, Secrets: connector.Secrets, Inserter: inserter,
		API: connector.API, Clients: connector.Clients, Lookback: cfg.ReconcileLookback, Reenable: cfg.PolarReenable,
		PublicURL: cfg.PublicURL, WebhookPath: cfg.WebhookPath, Metrics: metrics, Logger: logger,
	}), nil
}

func reconcileCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, reconcileUsage)
		return nil
	}
	fs := subFlags("reconcile", reconcileUsage, stdout)
	var workspace, environment string
	var since time.Duration
	var dryRun, asJSON bool
	fs.StringVar(&workspace, "workspace", "", "the workspace's id (UUID)")
	fs.StringVar(&environment, "environment", "", "production or sandbox")
	fs.DurationVar(&since, "since", 0, "how far back to read orders and refunds (default RELAY_RECONCILE_LOOKBACK, 72h)")
	fs.BoolVar(&dryRun, "dry-run", false, "report what the pass would do, change nothing")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 || workspace == "" || environment == "" {
		fs.Usage()
		return errors.New("reconcile needs --workspace and --environment, and no arguments")
	}
	if since < 0 {
		return errors.New("--since must be positive")
	}
	keys, err := endpoints.ParseKeyring(getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	cfg, err := parseConfig(getenv, false)
	if err != nil {
		return err
	}
	cfg.Workers = 1
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	r, err := newReconciler(cfg, pool, newConnector(cfg, pool, keys), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	rep, err := r.Reconcile(ctx, workspace, environment, reconcile.Options{Since: since, DryRun: dryRun})
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(stdout, rep)
	if rep.Result != reconcile.ResultOK {
		return fmt.Errorf("reconciliation pass %s: %s", rep.Result, rep.Error)
	}
	return nil
}

func printReport(w io.Writer, rep reconcile.Report) {
	mode := ""
	if rep.DryRun {
		mode = " (dry run: nothing changed)"
	}
	fmt.Fprintf(w, "workspace %s %s: orders since %s: %d orders, %d refunds, %d products read, %d findings, %s in %s%s\n",
		rep.Workspace, rep.Environment, rep.Since.Format(time.RFC3339), rep.Orders, rep.Refunds, rep.Products, len(rep.Findings), rep.Result, rep.Took, mode)
	for _, f := range rep.Findings {
		fmt.Fprintln(w, f)
	}
}
