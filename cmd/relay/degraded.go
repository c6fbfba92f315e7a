package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/spool"
)

// openSpool opens RELAY_SPOOL_DIR for a replica that receives webhooks; nil
// when none is configured.
func openSpool(cfg *config, logger *slog.Logger) (*spool.Spool, error) {
	if cfg.SpoolDir == "" {
		return nil, nil
	}
	if cfg.Role == roleWorker {
		logger.Warn("RELAY_SPOOL_DIR is ignored: a worker replica receives no webhooks", "spool", cfg.SpoolDir)
		return nil, nil
	}
	return spool.Open(cfg.SpoolDir, spool.Options{MaxBytes: cfg.SpoolMaxBytes, Logger: logger})
}

// drainSpool moves spooled webhooks into the database, in the receiver's own
// transaction, from now on: what an earlier run left at once, then each new
// append, retrying every second at most while the database is down. The
// returned function stops it and waits until it has.
func drainSpool(ctx context.Context, sp *spool.Spool, rc *receiver.Receiver) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sp.Run(ctx, rc.CommitEvents, spool.RunOptions{MaxBackoff: time.Second})
	}()
	return func() {
		cancel()
		<-done
	}
}

// databaseWait is a replica that started without its database waiting for
// it in the background.
type databaseWait struct {
	cancel  context.CancelFunc
	done    chan struct{}
	started bool // the workers were started; read after done closes
}

// waitForDatabase checks the database every second or so until it answers
// and is migrated, then calls startWorkers, unless nil, until that succeeds
// too. It logs what it waits for when that changes, not each attempt. A
// database that answers with migrations pending is passed to stop, as it
// stops serve at start, and ends the wait.
func waitForDatabase(ctx context.Context, pool *pgxpool.Pool, cfg *config, startWorkers func() error, stop func(error), logger *slog.Logger) *databaseWait {
	ctx, cancel := context.WithCancel(ctx)
	w := &databaseWait{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		last, wait := "", 100*time.Millisecond
		for ctx.Err() == nil {
			err := checkDatabase(ctx, pool, cfg)
			if errors.Is(err, errNotMigrated) {
				stop(err)
				return
			}
			if err == nil && startWorkers == nil {
				logger.Info("database answers: migrations checked")
				return
			}
			if err == nil {
				if err = startWorkers(); err == nil {
					w.started = true
					logger.Info("database answers: migrations checked, workers started")
					return
				}
			}
			if ctx.Err() != nil {
				return
			}
			if msg := err.Error(); msg != last {
				logger.Warn("waiting for the database", "error", err)
				last = msg
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Second)
		}
	}()
	return w
}

// stop ends the wait and reports whether the workers were started; true
// when nothing waited (they were started at once).
func (w *databaseWait) stop() bool {
	if w == nil {
		return true
	}
	w.cancel()
	<-w.done
	return w.started
}
