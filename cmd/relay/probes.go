package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/migrations"
	"github.com/relayhq/relay/primary"
)

// probeConns bounds the probe pool: one connection for the metrics
// collection and one for /readyz's check, each run by one request at a time.
const probeConns = 2

// probeAppName names the probe pool's connections in pg_stat_activity.
const probeAppName = "relay-probes"

// newProbePool makes the pool /metrics and /readyz read the database
// through: however many scrapers and probes there are, they hold at most
// probeConns connections, and never those webhooks and workers need.
func newProbePool(ctx context.Context, cfg *config) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pcfg.MaxConns, pcfg.MinConns = probeConns, 0
	pcfg.ConnConfig.RuntimeParams["application_name"] = probeAppName
	primary.Follow(pcfg)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open database for probes: %w", err)
	}
	return pool, nil
}

// readyCheckAge is how long a successful database check of /readyz answers
// the probes that follow it.
const readyCheckAge = time.Second

// migratedCheck is /readyz's database check (reachable and migrated), run by
// one probe at a time. The probes that wait for a check share its answer,
// and a successful one answers those of the next readyCheckAge too; after a
// failure, the next probe checks again, so that a database back is seen at
// once.
type migratedCheck struct {
	pool *pgxpool.Pool

	mu      sync.Mutex
	at      time.Time // when the last check ended; zero: never
	pending bool
	err     error
}

func (c *migratedCheck) check(ctx context.Context) (pending bool, err error) {
	asked := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && (c.at.After(asked) || (c.err == nil && time.Since(c.at) < readyCheckAge)) {
		return c.pending, c.err
	}
	// Not the probe's own context: its answer is shared, and a probe that
	// hangs up must not make it an error for the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	c.pending, c.err = migrations.Pending(ctx, c.pool)
	c.at = time.Now()
	return c.pending, c.err
}
