package spool

import (
	"context"
	"time"
)

// RunOptions configure Run; a zero field takes its default.
type RunOptions struct {
	MaxEvents     int           // per commit; DefaultDrainEvents
	MinBackoff    time.Duration // the first wait after a failed drain; 100ms
	MaxBackoff    time.Duration // the wait doubles up to this; 5s
	CommitTimeout time.Duration // one commit's time limit; 30s
}

// Run drains the spool into commit until ctx ends: at once, then whenever an
// append commits, until the spool is empty. While drains fail (the database
// is down) it retries after a wait that doubles from MinBackoff to
// MaxBackoff. It logs when draining starts failing and when it works again,
// not each failure, and never an event's contents.
func (s *Spool) Run(ctx context.Context, commit CommitFunc, opts RunOptions) {
	opts.MaxEvents = orDefault(opts.MaxEvents, DefaultDrainEvents)
	opts.MinBackoff = orDefault(opts.MinBackoff, 100*time.Millisecond)
	opts.MaxBackoff = max(orDefault(opts.MaxBackoff, 5*time.Second), opts.MinBackoff)
	opts.CommitTimeout = orDefault(opts.CommitTimeout, 30*time.Second)

	backoff := opts.MinBackoff
	failures, drained := 0, 0 // failed drains in a row; events moved since the spool was last empty
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, opts.CommitTimeout)
		n, err := s.Drain(cctx, commit, opts.MaxEvents)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if failures == 0 {
				s.logger.Warn("spool: cannot drain; retrying", "path", s.path, "error", err)
			}
			failures++
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, opts.MaxBackoff)
			continue
		}
		if failures > 0 {
			s.logger.Info("spool: draining again", "path", s.path, "failed_attempts", failures)
			failures, backoff = 0, opts.MinBackoff
		}
		drained += n
		if n > 0 {
			continue // until a drain finds nothing
		}
		if drained > 0 {
			s.logger.Info("spool: drained", "path", s.path, "events", drained)
			drained = 0
		}
		select {
		case <-ctx.Done():
		case <-s.notify:
		}
	}
}

// sleep waits d, or less if ctx ends first, and reports whether ctx is
// still going.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
