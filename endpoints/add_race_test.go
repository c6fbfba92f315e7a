package endpoints

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
)

// TestOneSecretForBothEnvironmentsIsRefused: production's secrets are tried
// first, so a sandbox delivery signed with a secret production has too
// would complete production sales. Adding it is refused, also when the two
// adds race, whatever the order; other workspaces and other secrets are not
// affected.
func TestOneSecretForBothEnvironmentsIsRefused(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	s := NewStore(pool, keyring(t, newKey64(t)))
	ws, other := newWorkspace(t, pool), newWorkspace(t, pool)
	const shared = "polar_whs_one_secret_for_both_1"

	prod := add(t, s, ws, Production, shared)
	_, err := s.Add(ctx, ws, Sandbox, shared)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "stored for production") || !strings.Contains(err.Error(), prod.ID) {
		t.Errorf("the production secret added for sandbox: %v, want ErrInvalid naming the production secret", err)
	}
	if strings.Contains(errText(err), shared) {
		t.Errorf("the error quotes the secret: %v", err)
	}
	add(t, s, ws, Production, shared)                       // twice for one environment: a rotation's no-op, allowed
	add(t, s, ws, Sandbox, "polar_whs_another_sandbox_one") // another secret: allowed
	add(t, s, other, Sandbox, shared)                       // another workspace: its own endpoint

	// Concurrent adds for the two environments: never both.
	for round := range 10 {
		ws := newWorkspace(t, pool)
		secret := "polar_whs_raced_secret_" + strings.Repeat("x", round+1)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, env := range []string{Production, Sandbox} {
			wg.Go(func() {
				<-start
				_, errs[i] = s.Add(ctx, ws, env, secret)
			})
		}
		close(start)
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrInvalid):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		var envs int
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT environment) FROM endpoint_secrets WHERE workspace_id = $1`, ws).Scan(&envs); err != nil {
			t.Fatal(err)
		}
		if ok != 1 || envs != 1 {
			t.Fatalf("round %d: %d of two racing adds of one secret for both environments succeeded (%d environments stored): %v", round, ok, envs, errs)
		}
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestAddRacingRekeyNeverStoresUnderTheOldKey: a replica still on the old
// key adds a secret while another, with the new key first, rekeys. The add
// waits for the rekey and is then refused (its keyring cannot open what is
// stored), instead of storing a row the new key's replicas cannot read.
func TestAddRacingRekeyNeverStoresUnderTheOldKey(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	oldKey, newKey := newKey64(t), newKey64(t)
	oldOnly := NewStore(pool, keyring(t, oldKey))
	rotating := NewStore(pool, keyring(t, newKey, oldKey))
	ws := newWorkspace(t, pool)
	add(t, oldOnly, ws, Production, "polar_whs_stored_before_rekey")

	// Hold the lock rekey takes, so that rekey queues first and the add
	// behind it, as when an add arrives mid-rekey.
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx) //nolint:errcheck
	if _, err := holder.Exec(ctx, `LOCK TABLE endpoint_secrets IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	rekeyed := make(chan error, 1)
	go func() { _, err := rotating.Rekey(ctx); rekeyed <- err }()
	waitForLockWaiters(t, pool, 1)
	added := make(chan error, 1)
	go func() { _, err := oldOnly.Add(ctx, ws, Sandbox, "polar_whs_added_during_rekey"); added <- err }()
	waitForLockWaiters(t, pool, 2)
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-rekeyed; err != nil {
		t.Fatalf("rekey: %v", err)
	}
	if err := <-added; err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Errorf("add under the old key after the rekey: %v, want refused (cannot decrypt what is stored)", err)
	}
	var old int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM endpoint_secrets WHERE key_id <> $1`, rotating.keys.PrimaryID()).Scan(&old); err != nil {
		t.Fatal(err)
	}
	if old != 0 {
		t.Errorf("%d secret(s) stored under the old key after rekey", old)
	}
}

// waitForLockWaiters waits until n sessions wait for a lock on
// endpoint_secrets.
func waitForLockWaiters(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
			WHERE NOT granted AND relation = 'endpoint_secrets'::regclass`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d session(s) wait for endpoint_secrets' lock after 10 s, want %d", waiting, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
