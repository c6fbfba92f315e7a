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
}

// Open opens or creates the spool in dir, and checks its totals against
// what it holds. A spool is one process's: Open fails with ErrLocked when
// another process has it open and does not let go within LockTimeout.
func Open(dir string, opts Options) (*Spool, error) {
	if dir == "" {
		return nil, errors.New("open spool: no directory given")
	}
	if opts.MaxBytes < 0 || opts.LockTimeout < 0 {
		return nil, fmt.Errorf("open spool %s: MaxBytes and LockTimeout must not be negative", dir)
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
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
		notify: make(chan struct{}, 1),
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
// which the drain's commit drops by webhook id.
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
	// A full spool refuses without waiting for a transaction; appends racing
	// for the last space are decided inside their transactions.
	var used int64
	if err := s.view(func(tx *bolt.Tx) error {
		_, used = readTotals(tx.Bucket(bucketTotals))
		return nil
	}); err != nil {
		return fmt.Errorf("spool webhook %s: %w", ev.WebhookID, err)
	}
	if used+int64(len(ev.Body)) > s.maxBytes {
		return fmt.Errorf("spool webhook %s: %w (%d of %d bytes used)", ev.WebhookID, ErrFull, used, s.maxBytes)
	}
	// The body is copied because a write may outlive this call (ctx ends
	// first), and bbolt reads values until its commit.
	body := bytes.Clone(ev.Body)
	done := make(chan error, 1)
	go func() {
		err := s.db.Batch(func(tx *bolt.Tx) error { return s.put(tx, rec, body) })
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
}

// Stats reads the spool's totals and its oldest event's time from the last
// commit: one read transaction, no scan.
func (s *Spool) Stats() (Stats, error) {
	st := Stats{MaxBytes: s.maxBytes}
	err := s.view(func(tx *bolt.Tx) error {
		st.Events, st.Bytes = readTotals(tx.Bucket(bucketTotals))
		_, v := tx.Bucket(bucketRecords).Cursor().First()
		if v == nil {
			return nil
		}
		var rec record
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode the oldest record: %w", err)
		}
		st.Oldest = rec.SpooledAt
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("read spool stats: %w", err)
	}
	return st, nil
}

// CommitFunc stores events in the database, in the receiver's transaction:
// it returns nil only after that transaction has committed. It must drop an
// event whose webhook id is stored already: a drain whose removal from the
// spool fails commits its events again later.
type CommitFunc func(ctx context.Context, events []*inbox.Event) error

// Drain passes the oldest spooled events, at most max (DefaultDrainEvents if
// max <= 0) and 8 MiB of bodies beyond the first, to commit, and removes them
// from the spool once commit returned nil. It returns how many it removed.
// Events appended meanwhile are newer and stay. A failing commit leaves the
// spool as it was.
func (s *Spool) Drain(ctx context.Context, commit CommitFunc, max int) (int, error) {
	if max <= 0 {
		max = DefaultDrainEvents
	}
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	keys, events, err := s.oldest(max)
	if err != nil || len(events) == 0 {
		return 0, err
	}
	if err := commit(ctx, events); err != nil {
		return 0, fmt.Errorf("commit %d spooled webhooks: %w", len(events), err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return remove(tx, keys) }); err != nil {
		return 0, fmt.Errorf("remove %d committed webhooks from the spool (they will be committed again, as duplicates): %w",
			len(keys), err)
	}
	return len(keys), nil
}

// oldest reads the events Drain passes on, with their keys.
func (s *Spool) oldest(max int) (keys [][]byte, events []*inbox.Event, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		bodies := tx.Bucket(bucketBodies)
		c := tx.Bucket(bucketRecords).Cursor()
		read := 0
		for k, v := c.First(); k != nil && len(events) < max && (len(events) == 0 || read < drainBytes); k, v = c.Next() {
			ev, err := decode(k, v, bodies.Get(k))
			if err != nil {
				return err
			}
			keys = append(keys, bytes.Clone(k)) // k lives as long as tx
			events = append(events, ev)
			read += len(ev.Body)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read spooled webhooks: %w", err)
	}
	return keys, events, nil
}

// view is s.db.View, failing with ErrClosed after Close.
func (s *Spool) view(fn func(*bolt.Tx) error) error {
	err := s.db.View(fn)
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// decode makes the event stored under key of its record and body, copying
// what it keeps: both live only as long as their transaction.
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
		WorkspaceID: rec.WorkspaceID, Environment: rec.Environment, Body: bytes.Clone(body),
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
