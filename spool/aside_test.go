package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// overwrite rewrites the stored record of the spool's nth event (1-based).
func overwrite(t *testing.T, s *Spool, nth uint64, edit func(meta string) string) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		key := binary.BigEndian.AppendUint64(nil, nth)
		b := tx.Bucket(bucketRecords)
		return b.Put(key, []byte(edit(string(b.Get(key)))))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A record that does not decode (bit rot; a version this relay does not
// read) no longer stops the drain: it is set aside, kept whole, counted and
// listed, and the events around it are stored. A set-aside event that this
// relay reads can be committed again (relay spool retry does that), and
// dropped.
func TestDrainSetsAsideWhatDoesNotDecode(t *testing.T) {
	pool := testdb.NewPool(t)
	dir := t.TempDir()
	var logs testkit.SyncBuffer
	s := open(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	appendAll(t, s, event("msg_a", 100), event("msg_rot", 100), event("msg_b", 100), event("msg_v9", 100), event("msg_c", 100))
	overwrite(t, s, 2, func(string) string { return `{"v":1,"webhook_id":"msg_rot","body_l` })
	overwrite(t, s, 4, func(meta string) string { return strings.Replace(meta, `"v":1`, `"v":9`, 1) })
	s.Close() // found as a restart would find them: Open recounts the totals
	s = open(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	n, err := s.Drain(t.Context(), inboxCommit(pool), 0)
	if err != nil || n != 5 {
		t.Fatalf("drain = %d, %v; want all 5 out of the spool", n, err)
	}
	bodies, rows := inboxBodies(t, pool)
	if rows != 3 || bodies["msg_a"] == nil || bodies["msg_b"] == nil || bodies["msg_c"] == nil {
		t.Fatalf("inbox holds %d rows (%v), want msg_a, msg_b and msg_c", rows, bodies)
	}
	st := stats(t, s)
	if st.Events != 0 || st.Bytes != 0 || st.SetAside != 2 {
		t.Fatalf("stats after the drain: %+v, want empty with 2 set aside", st)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(s))
	if got := gauge(t, reg, "relay_spool_set_aside_events"); got != 2 {
		t.Errorf("relay_spool_set_aside_events = %v, want 2", got)
	}

	aside, err := SetAside(dir)
	if err != nil || len(aside) != 2 {
		t.Fatalf("SetAside = %v, %v; want 2", aside, err)
	}
	rot, v9 := aside[0], aside[1]
	if rot.WebhookID == "msg_rot" || !strings.Contains(rot.Reason, "decode record") || string(rot.Record) != `{"v":1,"webhook_id":"msg_rot","body_l` {
		t.Errorf("the rotten record set aside as %+v", rot)
	}
	if v9.WebhookID != "msg_v9" || v9.EventType != "order.paid" || !strings.Contains(v9.Reason, "version 9") || len(v9.Body) != 100 {
		t.Errorf("the version 9 record set aside as %+v", v9)
	}
	if _, err := v9.Event(); err == nil {
		t.Error("a version 9 record decodes")
	}
	if log := logs.String(); strings.Count(log, "spool: webhook set aside") != 2 || !strings.Contains(log, v9.ID) {
		t.Errorf("want one log line per set-aside event, naming it:\n%s", log)
	}

	// A relay that reads it (here: the record as it was) commits it again.
	v9.Record = []byte(strings.Replace(string(v9.Record), `"v":9`, `"v":1`, 1))
	ev, err := v9.Event()
	if err != nil {
		t.Fatal(err)
	}
	if err := inboxCommit(pool)(t.Context(), []*inbox.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if bodies, _ := inboxBodies(t, pool); string(bodies["msg_v9"]) != string(v9.Body) {
		t.Errorf("msg_v9 retried as %q", bodies["msg_v9"])
	}
	for _, a := range aside {
		if err := DropAside(dir, a.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := DropAside(dir, rot.ID); !errors.Is(err, ErrNotSetAside) {
		t.Errorf("drop of a dropped event = %v, want ErrNotSetAside", err)
	}
	if _, err := ReadAside(dir, "../"+FileName); !errors.Is(err, ErrNotSetAside) {
		t.Errorf("read of a path outside the aside directory = %v, want ErrNotSetAside", err)
	}
	if st := stats(t, s); st.SetAside != 0 {
		t.Errorf("%d set aside after dropping both", st.SetAside)
	}
}

// A commit refused for what an event holds is retried one event at a time:
// the refused one is set aside, the others are stored. The database being
// down is not a refusal: the drain stops and everything stays spooled.
func TestDrainSetsAsideWhatTheDatabaseRefuses(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	appendAll(t, s, event("msg_a", 100), event("msg_poison", 100), event("msg_b", 100))
	var mu sync.Mutex
	stored := map[string]bool{}
	down := false
	commit := func(_ context.Context, events []*inbox.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return errors.New("dial tcp: connection refused")
		}
		for _, e := range events {
			if e.WebhookID == "msg_poison" {
				return errors.Join(ErrRefused, errors.New("poisoned row (SQLSTATE P0001)"))
			}
		}
		for _, e := range events {
			stored[e.WebhookID] = true
		}
		return nil
	}

	down = true
	if n, err := s.Drain(t.Context(), commit, 0); err == nil || n != 0 {
		t.Fatalf("drain while the database is down = %d, %v; want an error, nothing removed", n, err)
	}
	if st := stats(t, s); st.Events != 3 || st.SetAside != 0 {
		t.Fatalf("after a drain with the database down: %+v, want 3 spooled, none set aside", st)
	}

	down = false
	if n, err := s.Drain(t.Context(), commit, 0); err != nil || n != 3 {
		t.Fatalf("drain = %d, %v; want 3 out of the spool", n, err)
	}
	if !stored["msg_a"] || !stored["msg_b"] || len(stored) != 2 {
		t.Fatalf("stored %v, want msg_a and msg_b", stored)
	}
	aside, err := SetAside(dir)
	if err != nil || len(aside) != 1 || aside[0].WebhookID != "msg_poison" || !strings.Contains(aside[0].Reason, "poisoned row") {
		t.Fatalf("set aside: %+v, %v; want msg_poison with the database's reason", aside, err)
	}
	if ev, err := aside[0].Event(); err != nil || ev.WebhookID != "msg_poison" || len(ev.Body) != 100 {
		t.Fatalf("the set-aside event decodes to %+v, %v", ev, err)
	}
	if st := stats(t, s); st.Events != 0 || st.SetAside != 1 {
		t.Fatalf("stats %+v, want empty with 1 set aside", st)
	}
}
