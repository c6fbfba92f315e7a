// Package spool keeps verified webhook deliveries on local disk while the
// database cannot take them, and hands them to the database, oldest first,
// once it can. An append returns only after its transaction is on disk, so a
// delivery acknowledged from the spool survives a crash of the process.
//
// The store is one bbolt file. bbolt commits by writing the new pages,
// fdatasync, then one of its two checksummed meta pages and fdatasync again,
// so a write torn by a crash leaves the previous meta page, and with it every
// earlier commit, intact.
package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/relayhq/relay/inbox"
)

// Defaults of Options and of Drain.
const (
	DefaultMaxBytes    int64 = 1 << 30
	DefaultLockTimeout       = time.Second
	DefaultDrainEvents       = 128
	DefaultMaxAppends        = 64
	DefaultStallAfter        = 2 * time.Second
)

// FileName is the spool's file in its directory.
const FileName = "spool.db"

const (
	recordVersion = 1
	// maxBatch bounds the appends one bbolt transaction coalesces, and so the
	// dirty pages it holds in memory (bodies are up to a MiB each).
	maxBatch = 128
	// drainBytes bounds the body bytes one Drain reads into memory; it reads
	// one event at least, whatever its size.
	drainBytes = 8 << 20
)

var (
	// ErrFull means the event would take the spool past its MaxBytes.
	ErrFull = errors.New("spool is full")
	// ErrLocked means another process holds the spool's file.
	ErrLocked = errors.New("spool is in use by another process")
	// ErrClosed means the spool was closed.
	ErrClosed = errors.New("spool is closed")
	// ErrStalled means appends have waited StallAfter for the disk with none
	// finishing: a new one would only wait too.
	ErrStalled = errors.New("spool is stalled: its disk has not finished a write")
	// ErrRefused, wrapped in a CommitFunc's error, means the database
	// refused the events for what they hold (a constraint, a data
	// exception), as against failing to store them: Drain then sets aside
	// the event it refuses instead of retrying it forever.
	ErrRefused = errors.New("refused by the database")
)

// The buckets: a record (an event without its body) and the body under the
// same key, and the totals kept with them in the same transactions.
var (
	bucketRecords = []byte("records")
	bucketBodies  = []byte("bodies")
	bucketTotals  = []byte("totals")
	keyEvents     = []byte("events")
	keyBytes      = []byte("bytes")
)

// record is how an event is stored, without its body. Its fields only ever
// get added; Version changes if one changes meaning.
type record struct {
	Version          int        `json:"v"`
	SpooledAt        time.Time  `json:"spooled_at"`
	WebhookID        string     `json:"webhook_id"`
	EventType        string     `json:"event_type"`
	Status           string     `json:"status"`
	WebhookTimestamp time.Time  `json:"webhook_timestamp"`
	EventTimestamp   *time.Time `json:"event_timestamp,omitempty"`
	Error            *string    `json:"error,omitempty"`
	// The workspace endpoint's delivery: whose secret verified it. Empty
	// for the platform's endpoint, and in records written before they were.
	WorkspaceID string `json:"workspace_id,omitempty"`
	Environment string `json:"environment,omitempty"`
	BodyLen     int    `json:"body_len"`
}

// Options configure Open.
type Options struct {
	// MaxBytes bounds the stored records and bodies; DefaultMaxBytes if 0.
	// The file is larger by bbolt's page overhead, and does not shrink
	// after a drain: bbolt reuses its free pages instead.
	MaxBytes int64
	// LockTimeout is how long Open waits for another process to release
	// the spool's file; DefaultLockTimeout if 0.
	LockTimeout time.Duration
	// Logger gets the spool's and its drainer's state changes; none if nil.
	Logger *slog.Logger
	// MaxAppends bounds the appends writing at once, counting those whose
	// caller has given up waiting (each holds its event's body); past it an
	// append waits for one to finish, within its context. DefaultMaxAppends
	// if 0.
	MaxAppends int
	// StallAfter is how long appends may wait with none finishing before
	// the spool is stalled: Stalled reports it, and Append fails at once
	// with ErrStalled. DefaultStallAfter if 0.
	StallAfter time.Duration
}

// Spool is a durable local queue of verified deliveries. Its methods are safe
// for concurrent use.
type Spool struct {
	db       *bolt.DB
	path     string
	maxBytes int64
	logger   *slog.Logger
	notify   chan struct{} // a token after an append commits; Run waits on it
	drainMu  sync.Mutex    // one Drain at a time, so none commits what another is committing
	asideDir string        // where Drain sets aside what it cannot commit

	maxAppends int
	stallAfter time.Duration
	slots      chan struct{} // a token per append writing
	mu         sync.Mutex
	appending  int       // appends writing, with or without a caller waiting
	progressAt time.Time // when one last finished, or the first of those writing began
}

// Open opens or creates the spool in dir, and checks its totals against
// what it holds. A spool is one process's: Open fails with ErrLocked when
// another process has it open and does not let go within LockTimeout.
func Open(dir string, opts Options) (*Spool, error) {
	if dir == "" {
		return nil, errors.New("open spool: no directory given")
	}
	if opts.MaxBytes < 0 || opts.LockTimeout < 0 || opts.MaxAppends < 0 || opts.StallAfter < 0 {
		return nil, fmt.Errorf("open spool %s: MaxBytes, LockTimeout, MaxAppends and StallAfter must not be negative", dir)
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	opts.MaxAppends = orDefault(opts.MaxAppends, DefaultMaxAppends)
	opts.StallAfter = orDefault(opts.StallAfter, DefaultStallAfter)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	path := filepath.Join(dir, FileName)
	// bbolt's defaults are its durable ones and are kept: every commit is
	// fdatasync'd (NoSync false), so is the file's growth (NoGrowSync false),
	// and the freelist is written with each commit (NoFreelistSync false),
	// which costs a page per commit and saves a scan of the file at Open.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open spool %s: %w: its lock was not released within %s (each replica needs a spool directory of its own)",
			path, ErrLocked, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	db.MaxBatchSize = maxBatch
	s := &Spool{
		db: db, path: path, maxBytes: opts.MaxBytes, logger: opts.Logger,
		notify: make(chan struct{}, 1), asideDir: AsideDir(dir),
		maxAppends: opts.MaxAppends, stallAfter: opts.StallAfter, slots: make(chan struct{}, opts.MaxAppends),
	}
	events, size, err := s.check()
	if err != nil {
		db.Close() //nolint:errcheck // the check's error is the one to report
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	if events > 0 {
		s.logger.Info("spool: webhooks from an earlier run wait to be drained", "path", path, "events", events, "bytes", size)
	}
	return s, nil
}

// check counts an existing spool's events and bytes, correcting the stored
// totals if they differ, and creates a new spool's buckets. It writes only
// when it has to: a spool on a full disk must still open, to be drained.
func (s *Spool) check() (events, size int64, err error) {
	var storedEvents, storedBytes int64
	ok := false
	err = s.db.View(func(tx *bolt.Tx) error {
		records, bodies, totals := tx.Bucket(bucketRecords), tx.Bucket(bucketBodies), tx.Bucket(bucketTotals)
		if records == nil || bodies == nil || totals == nil {
			return nil
		}
		rc, bc := records.Cursor(), bodies.Cursor()
		rk, rv := rc.First()
		bk, bv := bc.First()
		for rk != nil || bk != nil {
			if !bytes.Equal(rk, bk) {
				return fmt.Errorf("spool is inconsistent: record key %x, body key %x", rk, bk)
			}
			events++
			size += int64(len(rv) + len(bv))
			rk, rv = rc.Next()
			bk, bv = bc.Next()
		}
		storedEvents, storedBytes = readTotals(totals)
		ok = storedEvents == events && storedBytes == size
		return nil
	})
	if err != nil || ok {
		return events, size, err
	}
	if events > 0 || storedEvents > 0 || storedBytes > 0 {
		s.logger.Warn("spool: totals corrected", "path", s.path,
			"stored_events", storedEvents, "events", events, "stored_bytes", storedBytes, "bytes", size)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketRecords, bucketBodies, bucketTotals} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return writeTotals(tx.Bucket(bucketTotals), events, size)
	})
	return events, size, err
}

// Append stores ev durably: it returns nil only after the transaction holding
// ev has committed to disk. Concurrent appends share transactions, and so
// their fsyncs. It returns ErrFull (wrapped) when ev does not fit, and any
// other error when ev may not be on disk. When ctx ends first, Append returns
// its error, and ev may yet be stored: a redelivery is then a duplicate,
// which the drain's commit drops by webhook id. A write whose caller gave up
// still counts against MaxAppends until it ends, so that a stalled disk holds
// a bounded number of writes (and bodies) instead of one per request; once
// the spool is stalled, Append fails at once with ErrStalled.
//
// Only ev's webhook id, type, status, timestamps, error and body are kept.
func (s *Spool) Append(ctx context.Context, ev *inbox.Event) error {
	if ev == nil || ev.WebhookID == "" {
		return errors.New("spool webhook: the event has no webhook id")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("spool webhook %s: %w", ev.WebhookID, err)
	}
	rec := &record{
		Version: recordVersion, WebhookID: ev.WebhookID, EventType: ev.EventType, Status: ev.Status,
		WebhookTimestamp: ev.WebhookTimestamp, EventTimestamp: ev.EventTimestamp, Error: ev.Error,
		WorkspaceID: ev.WorkspaceID, Environment: ev.Environment, BodyLen: len(ev.Body),
	}
	if err := s.startAppend(ctx); err != nil {
		return fmt.Errorf("spool webhook %s: %w", ev.WebhookID, err)
	}
	// A full spool refuses without waiting for a transaction; appends racing
	// for the last space are decided inside their transactions.
	var used int64
	if err := s.view(func(tx *bolt.Tx) error {
		_, used = readTotals(tx.Bucket(bucketTotals))
		return nil
	}); err != nil {
		s.endAppend()
		return fmt.Errorf("spool webhook %s: %w", ev.WebhookID, err)
	}
	if used+int64(len(ev.Body)) > s.maxBytes {
		s.endAppend()
		return fmt.Errorf("spool webhook %s: %w (%d of %d bytes used)", ev.WebhookID, ErrFull, used, s.maxBytes)
	}
	// The body is copied because a write may outlive this call (ctx ends
	// first), and bbolt reads values until its commit.
	body := bytes.Clone(ev.Body)
	done := make(chan error, 1)
	go func() {
		err := s.db.Batch(func(tx *bolt.Tx) error { return s.put(tx, rec, body) })
		s.endAppend()
		if err == nil {
			select {
			case s.notify <- struct{}{}:
			default: // a token is waiting already
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if errors.Is(err, ErrFull) {
			return fmt.Errorf("spool webhook %s: %w (limit %d bytes)", ev.WebhookID, err, s.maxBytes)
		}
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			err = ErrClosed
		}
		if err != nil {
			return fmt.Errorf("spool webhook %s: %w", ev.WebhookID, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("spool webhook %s: %w (the write goes on, and may be stored)", ev.WebhookID, ctx.Err())
	}
}

// startAppend takes one of the MaxAppends slots, waiting for one within
// ctx, unless the spool is stalled.
func (s *Spool) startAppend(ctx context.Context) error {
	if s.Stalled() {
		return fmt.Errorf("%w for %s, %d appends waiting", ErrStalled, s.stallAfter, s.Appending())
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("all %d spool writes busy: %w", s.maxAppends, ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.appending == 0 {
		s.progressAt = time.Now()
	}
	s.appending++
	return nil
}

// endAppend gives back the slot of an append whose write has ended.
func (s *Spool) endAppend() {
	s.mu.Lock()
	s.appending--
	s.progressAt = time.Now()
	s.mu.Unlock()
	<-s.slots
}

// Appending is how many appends are writing, whether or not their callers
// still wait: at most MaxAppends.
func (s *Spool) Appending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appending
}

// Stalled reports whether new appends cannot be written: appends have
// waited StallAfter with none finishing (the disk does not return their
// fsync).
func (s *Spool) Stalled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appending > 0 && time.Since(s.progressAt) > s.stallAfter
}

// HoldWrites is a test seam standing for a disk whose fsync does not
// return: it holds bbolt's writer lock, as a commit stuck in fsync holds
// it, until release is called, so appends wait exactly as they would on a
// stalled disk. bbolt has no hook into its fsync, and a real stalled disk
// needs device-mapper or FUSE. Nothing but tests calls it.
func (s *Spool) HoldWrites() (release func(), err error) {
	tx, err := s.db.Begin(true)
	if err != nil {
		return nil, fmt.Errorf("hold the spool's writes: %w", err)
	}
	var once sync.Once
	return func() { once.Do(func() { tx.Rollback() }) }, nil //nolint:errcheck // nothing was written
}

// put adds one event to tx. bbolt's Batch may call it more than once, each
// time in a new transaction after rolling back the last, so it changes
// nothing but tx.
func (s *Spool) put(tx *bolt.Tx, rec *record, body []byte) error {
	records, bodies, totals := tx.Bucket(bucketRecords), tx.Bucket(bucketBodies), tx.Bucket(bucketTotals)
	events, size := readTotals(totals)
	seq, err := records.NextSequence()
	if err != nil {
		return fmt.Errorf("next key: %w", err)
	}
	// Taken under bbolt's writer lock, so spooling times follow key order
	// (unless the wall clock steps back).
	rec.SpooledAt = time.Now().UTC()
	meta, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	n := int64(len(meta) + len(body))
	if size+n > s.maxBytes {
		return ErrFull
	}
	key := binary.BigEndian.AppendUint64(nil, seq)
	if err := records.Put(key, meta); err != nil {
		return fmt.Errorf("put record: %w", err)
	}
	if err := bodies.Put(key, body); err != nil {
		return fmt.Errorf("put body: %w", err)
	}
	return writeTotals(totals, events+1, size+n)
}

// Stats is what the spool holds.
type Stats struct {
	Events   int64     // spooled events
	Bytes    int64     // their records' and bodies' bytes
	MaxBytes int64     // the limit on Bytes
	Oldest   time.Time // when the oldest event was spooled; zero if none
	SetAside int       // events set aside (see Drain), kept beside the spool
}

// Stats reads the spool's totals and its oldest event's time from the last
// commit (one read transaction, no scan), and counts the set-aside events.
func (s *Spool) Stats() (Stats, error) {
	st := Stats{MaxBytes: s.maxBytes}
	err := s.view(func(tx *bolt.Tx) error {
		st.Events, st.Bytes = readTotals(tx.Bucket(bucketTotals))
		// A record that does not decode is set aside by the next drain;
		// meanwhile the oldest that does gives the age.
		c := tx.Bucket(bucketRecords).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var rec record
			if json.Unmarshal(v, &rec) == nil {
				st.Oldest = rec.SpooledAt
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("read spool stats: %w", err)
	}
	if st.SetAside, err = countAside(s.asideDir); err != nil {
		return Stats{}, fmt.Errorf("read spool stats: %w", err)
	}
	return st, nil
}

// CommitFunc stores events in the database, in the receiver's transaction:
// it returns nil only after that transaction has committed. It must drop an
// event whose webhook id is stored already: a drain whose removal from the
// spool fails commits its events again later. Its error wraps ErrRefused
// when the database refused the events for what they hold; any other error
// means the database could not take them now.
type CommitFunc func(ctx context.Context, events []*inbox.Event) error

// Drain passes the oldest spooled events, at most max (DefaultDrainEvents if
// max <= 0) and 8 MiB of bodies beyond the first, to commit, and removes them
// from the spool once commit returned nil. Events appended meanwhile are
// newer and stay. A commit failing otherwise than ErrRefused (the database
// is down) leaves those events spooled, to be retried.
//
// An event that cannot hold up the others: one whose record does not decode
// (bit rot, a record of another version), or one the database refuses (the
// events of a refused commit are committed again one by one to find it), is
// set aside: written to a file of its own in AsideDir, fsync'd, then removed
// from the spool, and logged. SetAside lists those files; an operator
// retries or drops them (relay spool). Drain returns how many events left
// the spool, committed or set aside.
func (s *Spool) Drain(ctx context.Context, commit CommitFunc, max int) (int, error) {
	if max <= 0 {
		max = DefaultDrainEvents
	}
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	batch, err := s.oldest(max)
	if err != nil || len(batch) == 0 {
		return 0, err
	}
	var gone, keys [][]byte // keys to remove from the spool; those of decoded events
	var events []*inbox.Event
	var cerr error
	for _, sp := range batch {
		if sp.err != nil {
			if cerr = s.setAside(sp, sp.err.Error()); cerr != nil {
				break // what was set aside is removed below; nothing is committed
			}
			gone = append(gone, sp.key)
			continue
		}
		keys = append(keys, sp.key)
		events = append(events, sp.event)
	}
	if cerr == nil && len(events) > 0 {
		cerr = commit(ctx, events)
		switch {
		case cerr == nil:
			gone = append(gone, keys...)
		case errors.Is(cerr, ErrRefused):
			var done [][]byte
			done, cerr = s.commitEach(ctx, commit, batch)
			gone = append(gone, done...)
		default:
			cerr = fmt.Errorf("commit %d spooled webhooks: %w", len(events), cerr)
		}
	}
	if len(gone) == 0 {
		return 0, cerr
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return remove(tx, gone) }); err != nil {
		return 0, errors.Join(cerr, fmt.Errorf("remove %d committed or set-aside webhooks from the spool (they will be committed or set aside again, as duplicates): %w",
			len(gone), err))
	}
	return len(gone), cerr
}

// commitEach commits the decoded events of batch one at a time, setting
// aside each one the database refuses, and returns the keys of those
// committed or set aside. It stops at the first failure that is not a
// refusal: the database is down, and the rest wait.
func (s *Spool) commitEach(ctx context.Context, commit CommitFunc, batch []*spooled) ([][]byte, error) {
	var done [][]byte
	for _, sp := range batch {
		if sp.err != nil {
			continue // set aside already
		}
		err := commit(ctx, []*inbox.Event{sp.event})
		if errors.Is(err, ErrRefused) {
			err = s.setAside(sp, err.Error())
		}
		if err != nil {
			return done, fmt.Errorf("commit spooled webhook %s: %w", sp.event.WebhookID, err)
		}
		done = append(done, sp.key)
	}
	return done, nil
}

// spooled is one spooled event as Drain reads it: its key, its record and
// body as stored, and the event they decode to, or why they do not.
type spooled struct {
	key, meta, body []byte
	event           *inbox.Event
	err             error
}

// oldest reads the events Drain passes on, with their keys.
func (s *Spool) oldest(max int) (batch []*spooled, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		bodies := tx.Bucket(bucketBodies)
		c := tx.Bucket(bucketRecords).Cursor()
		read := 0
		for k, v := c.First(); k != nil && len(batch) < max && (len(batch) == 0 || read < drainBytes); k, v = c.Next() {
			// k, v and the body live as long as tx.
			sp := &spooled{key: bytes.Clone(k), meta: bytes.Clone(v), body: bytes.Clone(bodies.Get(k))}
			sp.event, sp.err = decode(k, sp.meta, sp.body)
			batch = append(batch, sp)
			read += len(sp.body)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read spooled webhooks: %w", err)
	}
	return batch, nil
}

// view is s.db.View, failing with ErrClosed after Close.
func (s *Spool) view(fn func(*bolt.Tx) error) error {
	err := s.db.View(fn)
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// decode makes the event stored under key of its record and body. The event
// holds body: pass a copy of one that lives only as long as its transaction.
func decode(key, meta, body []byte) (*inbox.Event, error) {
	var rec record
	if err := json.Unmarshal(meta, &rec); err != nil {
		return nil, fmt.Errorf("decode record %x: %w", key, err)
	}
	if rec.Version != recordVersion {
		return nil, fmt.Errorf("record %x has version %d, this relay reads %d", key, rec.Version, recordVersion)
	}
	if len(body) != rec.BodyLen {
		return nil, fmt.Errorf("record %x: body of %d bytes, %d recorded", key, len(body), rec.BodyLen)
	}
	return &inbox.Event{
		WebhookID: rec.WebhookID, EventType: rec.EventType, Status: rec.Status,
		WebhookTimestamp: rec.WebhookTimestamp, EventTimestamp: rec.EventTimestamp, Error: rec.Error,
		WorkspaceID: rec.WorkspaceID, Environment: rec.Environment, Body: body,
	}, nil
}

// remove deletes the events under keys, and their bytes from the totals.
func remove(tx *bolt.Tx, keys [][]byte) error {
	records, bodies, totals := tx.Bucket(bucketRecords), tx.Bucket(bucketBodies), tx.Bucket(bucketTotals)
	events, size := readTotals(totals)
	for _, k := range keys {
		meta := records.Get(k)
		if meta == nil {
			continue
		}
		events--
		size -= int64(len(meta) + len(bodies.Get(k)))
		if err := records.Delete(k); err != nil {
			return fmt.Errorf("delete record %x: %w", k, err)
		}
		if err := bodies.Delete(k); err != nil {
			return fmt.Errorf("delete body %x: %w", k, err)
		}
	}
	return writeTotals(totals, events, size)
}

func readTotals(b *bolt.Bucket) (events, size int64) {
	if v := b.Get(keyEvents); len(v) == 8 {
		events = int64(binary.BigEndian.Uint64(v))
	}
	if v := b.Get(keyBytes); len(v) == 8 {
		size = int64(binary.BigEndian.Uint64(v))
	}
	return events, size
}

func writeTotals(b *bolt.Bucket, events, size int64) error {
	if err := b.Put(keyEvents, binary.BigEndian.AppendUint64(nil, uint64(events))); err != nil {
		return fmt.Errorf("put event total: %w", err)
	}
	if err := b.Put(keyBytes, binary.BigEndian.AppendUint64(nil, uint64(size))); err != nil {
		return fmt.Errorf("put byte total: %w", err)
	}
	return nil
}

// Close closes the spool's file. Stop Run first; calls after Close fail with
// ErrClosed.
func (s *Spool) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close spool %s: %w", s.path, err)
	}
	return nil
}
