package spool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/relayhq/relay/inbox"
)

// open opens a spool in dir, closed when t ends.
func open(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// event is a delivery as the receiver verified it, with a body of size bytes.
func event(id string, size int) *inbox.Event {
	body := bytes.Repeat([]byte{'x'}, size)
	copy(body, `{"type":"order.paid"}`)
	return &inbox.Event{
		WebhookID: id, EventType: "order.paid", Status: inbox.StatusPending,
		WebhookTimestamp: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC), Body: body,
	}
}

func appendAll(t *testing.T, s *Spool, events ...*inbox.Event) {
	t.Helper()
	for _, e := range events {
		if err := s.Append(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
}

// storedIDs are the webhook ids in s, oldest first.
func storedIDs(t *testing.T, s *Spool) []string {
	t.Helper()
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRecords).ForEach(func(_, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			ids = append(ids, r.WebhookID)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func ids(events []*inbox.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.WebhookID
	}
	return out
}

func stats(t *testing.T, s *Spool) Stats {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// commitCount is how many write transactions s's file has committed.
func commitCount(t *testing.T, s *Spool) int {
	t.Helper()
	tx, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	return tx.ID()
}

func TestDrainPassesOldestFirstAndRemovesOnlyAfterCommit(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	at := time.Date(2025, 3, 1, 12, 0, 1, 500, time.FixedZone("x", 3600))
	note := "body is not JSON"
	first := &inbox.Event{
		WebhookID: "msg_0", EventType: "order.updated", Status: inbox.StatusInvalid,
		WebhookTimestamp: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC), EventTimestamp: &at,
		Body: []byte("\x00not json\xff"), Error: &note,
		WorkspaceID: "4b1f0c2e-8a4d-4c61-9f3e-2d7a5b9c1e00", Environment: "sandbox",
	}
	empty := &inbox.Event{WebhookID: "msg_1", EventType: "customer.created", Status: inbox.StatusIgnored}
	appendAll(t, s, first, empty, event("msg_2", 100), event("msg_3", 100), event("msg_4", 100))
	if st := stats(t, s); st.Events != 5 || st.Oldest.IsZero() || time.Since(st.Oldest) > time.Minute {
		t.Fatalf("stats after 5 appends: %+v", st)
	}

	// A failing commit (the database is down) keeps everything.
	down := errors.New("connection refused")
	var got [][]*inbox.Event
	n, err := s.Drain(t.Context(), func(_ context.Context, evs []*inbox.Event) error {
		got = append(got, evs)
		return down
	}, 2)
	if !errors.Is(err, down) || n != 0 {
		t.Fatalf("drain with a failing commit = %d, %v; want 0 and its error", n, err)
	}
	if want := []string{"msg_0", "msg_1", "msg_2", "msg_3", "msg_4"}; !slices.Equal(storedIDs(t, s), want) {
		t.Fatalf("after a failed commit the spool holds %v, want %v", storedIDs(t, s), want)
	}

	commit := func(_ context.Context, evs []*inbox.Event) error {
		got = append(got, evs)
		return nil
	}
	for range 3 {
		if _, err := s.Drain(t.Context(), commit, 2); err != nil {
			t.Fatal(err)
		}
	}
	var order []string
	for _, evs := range got[1:] {
		order = append(order, ids(evs)...)
	}
	if want := []string{"msg_0", "msg_1", "msg_2", "msg_3", "msg_4"}; !slices.Equal(order, want) || len(got[1]) != 2 {
		t.Fatalf("commits got %v in batches of %d, want %v in 2s", order, len(got[1]), want)
	}
	if left := storedIDs(t, s); len(left) != 0 {
		t.Fatalf("committed events still spooled: %v", left)
	}
	if st := stats(t, s); st.Events != 0 || st.Bytes != 0 || !st.Oldest.IsZero() {
		t.Fatalf("stats of the drained spool: %+v", st)
	}
	if n, err := s.Drain(t.Context(), commit, 2); n != 0 || err != nil || len(got) != 4 {
		t.Fatalf("drain of an empty spool = %d, %v, %d commits; want no commit", n, err, len(got)-4)
	}

	// Every field the inbox stores comes back as it went in.
	g := got[1][0]
	if g.WebhookID != first.WebhookID || g.EventType != first.EventType || g.Status != first.Status ||
		!g.WebhookTimestamp.Equal(first.WebhookTimestamp) || g.EventTimestamp == nil || !g.EventTimestamp.Equal(at) ||
		!bytes.Equal(g.Body, first.Body) || g.Error == nil || *g.Error != note ||
		g.WorkspaceID != first.WorkspaceID || g.Environment != first.Environment {
		t.Errorf("round trip: got %+v, want %+v", g, first)
	}
	if e := got[1][1]; e.EventTimestamp != nil || e.Error != nil || len(e.Body) != 0 || e.Status != inbox.StatusIgnored || e.WorkspaceID != "" {
		t.Errorf("round trip of an event without optional fields: %+v", e)
	}
}

func TestAppendsDuringADrainStay(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	appendAll(t, s, event("old_0", 50), event("old_1", 50))

	// While the drain's commit runs, other goroutines append; their events
	// are committed to the spool before the drain removes what it committed.
	n, err := s.Drain(t.Context(), func(ctx context.Context, evs []*inbox.Event) error {
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for i := range 10 {
			wg.Go(func() { errs <- s.Append(ctx, event(fmt.Sprintf("new_%d", i), 50)) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}, 10)
	if err != nil || n != 2 {
		t.Fatalf("drain = %d, %v; want the 2 old events", n, err)
	}
	left := storedIDs(t, s)
	slices.Sort(left)
	want := []string{"new_0", "new_1", "new_2", "new_3", "new_4", "new_5", "new_6", "new_7", "new_8", "new_9"}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("after the drain the spool holds %v, want the 10 appended during it", left)
	}
	if st := stats(t, s); st.Events != 10 {
		t.Fatalf("stats count %d events, want 10", st.Events)
	}
}

func TestConcurrentAppendsAllStoredInSharedCommits(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	before := commitCount(t, s)
	const n = 200
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs <- s.Append(context.Background(), event(fmt.Sprintf("msg_%03d", i), 200))
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := storedIDs(t, s)
	slices.Sort(got)
	if len(got) != n || len(slices.Compact(got)) != n {
		t.Fatalf("%d distinct events stored of %d appended", len(slices.Compact(got)), n)
	}
	if st := stats(t, s); st.Events != n {
		t.Fatalf("stats count %d events, want %d", st.Events, n)
	}
	// Each commit is one fsync'd transaction; Batch shares them.
	commits := commitCount(t, s) - before
	t.Logf("%d appends in %d commits", n, commits)
	if commits < 1 || commits >= n {
		t.Fatalf("%d appends took %d commits; want shared commits", n, commits)
	}
}

func TestFullSpoolRefusesAndDrainingFreesSpace(t *testing.T) {
	dir := t.TempDir()
	// Room for a few events of ~1.2 KB (1000 body bytes and the record).
	const limit = 8000
	s := open(t, dir, Options{MaxBytes: limit})
	var stored []string
	for i := 0; ; i++ {
		err := s.Append(t.Context(), event(fmt.Sprintf("msg_%d", i), 1000))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, fmt.Sprintf("msg_%d", i))
		if i > 10 {
			t.Fatalf("%d events of 1000 bytes fit in %d bytes", i+1, limit)
		}
	}
	full := stats(t, s)
	if full.Bytes > limit || full.Events != int64(len(stored)) || len(stored) < 4 {
		t.Fatalf("full spool: %+v with %d stored", full, len(stored))
	}

	// Appends racing for the last space: the check inside each transaction
	// decides, so the limit holds and every refusal is ErrFull.
	if _, err := s.Drain(t.Context(), func(context.Context, []*inbox.Event) error { return nil }, 2); err != nil {
		t.Fatal(err)
	}
	stored = stored[2:]
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i := range 30 {
		wg.Go(func() {
			id := fmt.Sprintf("race_%d", i)
			err := s.Append(context.Background(), event(id, 1000))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				stored = append(stored, id)
			} else {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if !errors.Is(err, ErrFull) {
			t.Errorf("refused with %v, want ErrFull", err)
		}
	}
	if len(errs) != 28 {
		t.Errorf("%d of 30 racing appends refused, want 28 (2 freed)", len(errs))
	}
	st := stats(t, s)
	if st.Bytes > limit || st.Events != int64(len(stored)) {
		t.Fatalf("after the race: %+v, %d stored; limit %d", st, len(stored), limit)
	}
	// Nothing of the refused events was written, and the totals are those
	// recounted from the file.
	s.Close()
	s = open(t, dir, Options{MaxBytes: limit})
	got, want := storedIDs(t, s), slices.Clone(stored)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("reopened spool holds %v, want %v", got, want)
	}
	if again := stats(t, s); again.Events != st.Events || again.Bytes != st.Bytes {
		t.Fatalf("stats %+v after reopening, %+v before", again, st)
	}

	if err := s.Append(t.Context(), event("one_more", 1000)); !errors.Is(err, ErrFull) {
		t.Fatalf("append to a full spool = %v, want ErrFull", err)
	}
	if _, err := s.Drain(t.Context(), func(context.Context, []*inbox.Event) error { return nil }, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(t.Context(), event("one_more", 1000)); err != nil {
		t.Fatalf("append after a drain freed space: %v", err)
	}
	// An event that can never fit is refused too.
	if err := s.Append(t.Context(), event("huge", limit)); !errors.Is(err, ErrFull) {
		t.Fatalf("append of an event larger than the limit = %v, want ErrFull", err)
	}
}

func TestOpenFailsFastWhileAnotherHoldsTheSpool(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, Options{})
	start := time.Now()
	s, err := Open(dir, Options{LockTimeout: 200 * time.Millisecond})
	took := time.Since(start)
	if err == nil {
		s.Close()
		t.Fatal("a second Open of a spool in use succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second Open: %v; want ErrLocked naming the directory", err)
	}
	if took > 2*time.Second {
		t.Fatalf("second Open failed after %s; want about its 200ms lock timeout", took)
	}
}

func TestOpenRecountsTotals(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	appendAll(t, s, event("a", 10), event("b", 20))
	want := stats(t, s)
	if err := s.db.Update(func(tx *bolt.Tx) error { return writeTotals(tx.Bucket(bucketTotals), 7, 7) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, Options{})
	if got := stats(t, s); got.Events != 2 || got.Bytes != want.Bytes {
		t.Fatalf("stats after reopening with wrong totals: %+v, want %+v", got, want)
	}
}

// A commit torn by a crash, one whose newest meta page did not reach the
// disk whole, was never acknowledged: bbolt falls back to the other meta
// page, the commit before it, and the spool opens with everything before.
func TestTornLastCommitLeavesEarlierOnes(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	appendAll(t, s, event("acked", 100), event("torn", 100))
	s.Close()

	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// bbolt's meta pages are pages 0 and 1; its txid is at byte 64 of each
	// (16 bytes of page header, then magic, version, page size, flags, root
	// bucket, freelist and high water mark).
	page := os.Getpagesize()
	txid := func(p int) uint64 {
		b := make([]byte, 8)
		if _, err := f.ReadAt(b, int64(p*page+64)); err != nil {
			t.Fatal(err)
		}
		return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
	}
	newest := 0
	if txid(1) > txid(0) {
		newest = 1
	}
	// Half a meta page written: the rest of it is garbage.
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 48), int64(newest*page+40)); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, Options{})
	if got := storedIDs(t, s); !slices.Equal(got, []string{"acked"}) {
		t.Fatalf("after a torn last commit the spool holds %v, want [acked]", got)
	}
	if st := stats(t, s); st.Events != 1 {
		t.Fatalf("stats after a torn last commit: %+v", st)
	}
	appendAll(t, s, event("after", 100))
	if got := storedIDs(t, s); !slices.Equal(got, []string{"acked", "after"}) {
		t.Fatalf("after appending again the spool holds %v", got)
	}
}

func TestAppendRefusals(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Append(ctx, event("late", 10)); !errors.Is(err, context.Canceled) {
		t.Fatalf("append with an ended context = %v", err)
	}
	if err := s.Append(t.Context(), &inbox.Event{Body: []byte("{}")}); err == nil {
		t.Fatal("append of an event without a webhook id succeeded")
	}
	if got := storedIDs(t, s); len(got) != 0 {
		t.Fatalf("refused appends stored %v", got)
	}
	s.Close()
	if err := s.Append(t.Context(), event("closed", 10)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append to a closed spool = %v, want ErrClosed", err)
	}
	if _, err := s.Drain(t.Context(), func(context.Context, []*inbox.Event) error { return nil }, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("drain of a closed spool = %v, want ErrClosed", err)
	}
}

func TestCollector(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(s))
	for name, want := range map[string]float64{
		"relay_spool_events": 0, "relay_spool_bytes": 0, "relay_spool_max_bytes": 1 << 20, "relay_spool_oldest_age_seconds": 0,
		"relay_spool_set_aside_events": 0, "relay_spool_appends_in_flight": 0,
	} {
		if got := gauge(t, reg, name); got != want {
			t.Errorf("empty spool: %s = %v, want %v", name, got, want)
		}
	}

	appendAll(t, s, event("a", 100), event("b", 100))
	st := stats(t, s)
	if got := gauge(t, reg, "relay_spool_events"); got != 2 {
		t.Errorf("relay_spool_events = %v, want 2", got)
	}
	if got := gauge(t, reg, "relay_spool_bytes"); got != float64(st.Bytes) || got < 200 {
		t.Errorf("relay_spool_bytes = %v, want %d", got, st.Bytes)
	}
	// The age grows from 0 while the event waits.
	deadline := time.Now().Add(5 * time.Second)
	for gauge(t, reg, "relay_spool_oldest_age_seconds") <= 0 {
		if time.Now().After(deadline) {
			t.Fatal("relay_spool_oldest_age_seconds stays 0 with events spooled")
		}
		time.Sleep(time.Millisecond)
	}
	if age := gauge(t, reg, "relay_spool_oldest_age_seconds"); age > time.Since(st.Oldest).Seconds()+1 {
		t.Errorf("oldest age %v, spooled %s ago", age, time.Since(st.Oldest))
	}

	// A closed spool leaves its series out rather than failing the scrape.
	s.Close()
	if families, err := reg.Gather(); err != nil || len(families) != 0 {
		t.Fatalf("scrape of a closed spool: %v, %v", families, err)
	}
}

// Without a spool the gauges are there, at 0: the dashboard's spool row and
// the alerts read 0, not no data.
func TestCollectorWithoutASpool(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(nil))
	for _, name := range []string{"relay_spool_events", "relay_spool_bytes", "relay_spool_max_bytes",
		"relay_spool_oldest_age_seconds", "relay_spool_set_aside_events", "relay_spool_appends_in_flight"} {
		if got := gauge(t, reg, name); got != 0 {
			t.Errorf("no spool: %s = %v, want 0", name, got)
		}
	}
}

// gauge is the value of reg's gauge named name.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}
