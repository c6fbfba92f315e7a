package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	bolt "go.etcd.io/bbolt"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/spool"
)

// relay spool lists and shows what the drain set aside (a record that does
// not decode, a webhook the database refused), retries the one it can read
// once the database takes it (--all skips, and names, the one it cannot),
// stored with its job, and drops the other.
func TestSpoolCommandsRetryAndDropWhatWasSetAside(t *testing.T) {
	dbURL := testdb.New(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, `
		CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'poisoned row'; END $$;
		CREATE TRIGGER poison BEFORE INSERT ON webhook_inbox
			FOR EACH ROW WHEN (NEW.webhook_id = 'msg_refused') EXECUTE FUNCTION poison();`); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	body := testkit.Fixture(t, "order.paid.json")
	for _, id := range []string{"msg_refused", "msg_rot", "msg_fine"} {
		e := &inbox.Event{WebhookID: id, EventType: "order.paid", Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: body}
		if err := sp.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	sp.Close()
	// msg_rot's record rots on disk.
	db, err := bolt.Open(filepath.Join(dir, spool.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("records")).Put(binary.BigEndian.AppendUint64(nil, 2), []byte(`{"v":1,"webh`))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if sp, err = spool.Open(dir, spool.Options{}); err != nil {
		t.Fatal(err)
	}
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := sp.Drain(ctx, func(ctx context.Context, events []*inbox.Event) error {
		return receiver.Commit(ctx, pool, client, events)
	}, 0)
	sp.Close()
	if err != nil || n != 3 {
		t.Fatalf("drain = %d, %v; want 3 out of the spool", n, err)
	}
	if _, _, ok := testkit.JobOf(t, pool, "msg_fine"); !ok {
		t.Fatal("msg_fine has no job")
	}

	env := map[string]string{"DATABASE_URL": dbURL, "RELAY_SPOOL_DIR": dir}
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, append([]string{"spool"}, args...), envFunc(env), &out)
		return out.String(), err
	}
	aside, err := spool.SetAside(dir)
	if err != nil || len(aside) != 2 {
		t.Fatalf("set aside: %v, %v; want 2", aside, err)
	}
	var refused, rot string
	for _, a := range aside {
		if a.WebhookID == "msg_refused" {
			refused = a.ID
		} else {
			rot = a.ID
		}
	}

	out, err := cli("list")
	if err != nil || !strings.Contains(out, refused) || !strings.Contains(out, rot) ||
		!strings.Contains(out, "poisoned row") || !strings.Contains(out, "decode record") {
		t.Fatalf("spool list: %v\n%s", err, out)
	}
	out, err = cli("show", refused)
	if err != nil || !strings.Contains(out, "webhook_id:   msg_refused") || !strings.Contains(out, "customer data masked") {
		t.Fatalf("spool show: %v\n%s", err, out)
	}
	if out, err := cli("retry", rot); err == nil || !strings.Contains(err.Error(), "cannot read it either") {
		t.Fatalf("retry of a record that does not decode: %v\n%s", err, out)
	}
	if out, err := cli("retry", refused); err == nil || !strings.Contains(err.Error(), "poisoned row") {
		t.Fatalf("retry while the database still refuses it: %v\n%s", err, out)
	}
	if _, err := pool.Exec(ctx, `DROP TRIGGER poison ON webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	// --all stores what it can read, and says which it cannot.
	if out, err := cli("retry", "--all"); !strings.Contains(out, "stored "+refused) || err == nil ||
		!strings.Contains(err.Error(), rot) || strings.Contains(err.Error(), refused) {
		t.Fatalf("retry --all: %v\n%s", err, out)
	}
	if _, _, ok := testkit.JobOf(t, pool, "msg_refused"); !ok {
		t.Error("msg_refused retried has no job")
	}
	if out, err := cli("drop", rot); err != nil || !strings.Contains(out, "dropped "+rot) {
		t.Fatalf("drop: %v\n%s", err, out)
	}
	if out, err := cli("list"); err != nil || !strings.Contains(out, "nothing set aside") {
		t.Fatalf("list after retry and drop: %v\n%s", err, out)
	}
	if _, err := cli("show", rot); !errors.Is(err, spool.ErrNotSetAside) {
		t.Errorf("show of a dropped webhook: %v, want ErrNotSetAside", err)
	}
}
