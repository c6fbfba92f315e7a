package endpoints

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/polar"
)

func signed(secret string, body []byte) http.Header {
	return signedAt(secret, body, time.Now())
}

func signedAt(secret string, body []byte, at time.Time) http.Header {
	return polar.SignedHeaders(secret, fmt.Sprintf("msg_%d", at.UnixNano()), at, body)
}

// value reads a gauge or a counter.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}

func startCache(t *testing.T, pool *pgxpool.Pool, keys *Keyring, opts CacheOptions) *Cache {
	t.Helper()
	c, err := NewCache(pool, keys, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// verifies reports whether workspace ws accepts a delivery signed with
// secret, and in which environment.
func verifies(c *Cache, ws, secret string) (string, error) {
	body := []byte(`{"type":"order.paid"}`)
	_, env, err := c.Verify(ws, body, signed(secret, body))
	return env, err
}

func TestTwoWorkspacesVerifyOnlyTheirOwn(t *testing.T) {
	pool := testdb.NewPool(t)
	keys := keyring(t, newKey64(t))
	s := NewStore(pool, keys)
	ws1, ws2, ws3 := newWorkspace(t, pool), newWorkspace(t, pool), newWorkspace(t, pool)
	const (
		ws1Prod = "polar_whs_ws1_production_secret"
		ws1Sand = "whsec_ws1SandboxSecretNotBase64AtAll01234"
		ws2Prod = "polar_whs_ws2_production_secret"
	)
	add(t, s, ws1, Production, ws1Prod)
	add(t, s, ws1, Sandbox, ws1Sand)
	add(t, s, ws2, Production, ws2Prod)

	logs := &testkit.SyncBuffer{}
	reg := prometheus.NewRegistry()
	c := startCache(t, pool, keys, CacheOptions{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Registerer: reg})

	for _, tc := range []struct {
		ws, secret, env string
		err             error
	}{
		{ws1, ws1Prod, Production, nil},
		{ws1, ws1Sand, Sandbox, nil},
		{strings.ToUpper(ws1), ws1Sand, Sandbox, nil},
		{ws2, ws2Prod, Production, nil},
		{ws1, ws2Prod, "", ErrUnverified},
		{ws2, ws1Prod, "", ErrUnverified},
		{ws2, ws1Sand, "", ErrUnverified},
		{ws3, ws1Prod, "", ErrNoSecret},
		{"00000000-0000-4000-8000-000000000000", ws1Prod, "", ErrNoSecret},
		{"not-a-workspace", ws1Prod, "", ErrNoSecret},
	} {
		env, err := verifies(c, tc.ws, tc.secret)
		if env != tc.env || !errors.Is(err, tc.err) {
			t.Errorf("workspace %s, secret %s: %q, %v; want %q, %v", tc.ws, tc.secret, env, err, tc.env, tc.err)
		}
	}

	// The 401 reasons are polar's, short and safe to show.
	body := []byte(`{}`)
	_, _, err := c.Verify(ws2, body, signed(ws1Prod, body))
	if !errors.Is(err, polar.ErrSignatureMismatch) || err.Error() != "no matching signature" {
		t.Errorf("wrong secret: %v", err)
	}
	_, _, err = c.Verify(ws1, body, signedAt(ws1Sand, body, time.Now().Add(-10*time.Minute)))
	if !errors.Is(err, ErrUnverified) || !errors.Is(err, polar.ErrTimestampTooOld) {
		t.Errorf("old timestamp: %v", err)
	}
	_, _, err = c.Verify(ws1, body, http.Header{})
	if !errors.Is(err, ErrUnverified) || !errors.Is(err, polar.ErrMissingHeaders) {
		t.Errorf("no headers: %v", err)
	}
	tampered := signed(ws1Prod, body)
	if _, _, err := c.Verify(ws1, []byte(`{ }`), tampered); !errors.Is(err, ErrUnverified) {
		t.Errorf("tampered body: %v", err)
	}

	// Metrics count by environment only; no workspace id is a label.
	if got := value(c.metrics.secrets.WithLabelValues(Production)); got != 2 {
		t.Errorf("relay_endpoint_secrets{environment=production} = %v, want 2", got)
	}
	if got := value(c.metrics.secrets.WithLabelValues(Sandbox)); got != 1 {
		t.Errorf("relay_endpoint_secrets{environment=sandbox} = %v, want 1", got)
	}
	families, err := reg.Gather()
	if err != nil || len(families) != 5 {
		t.Fatalf("gather: %v, %d families", err, len(families))
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if text.IsUUID(l.GetValue()) {
					t.Errorf("%s has label %s=%s", f.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
	for _, sec := range []string{ws1Prod, ws1Sand, ws2Prod} {
		if strings.Contains(logs.String(), sec) {
			t.Errorf("the log contains a secret:\n%s", logs.String())
		}
	}
}

// TestChangeReachesAnotherReplica makes changes through one Store and waits
// for a Cache on another pool, as on another replica, to honour them.
func TestChangeReachesAnotherReplica(t *testing.T) {
	t.Parallel() // mostly waiting for polls
	for name, opts := range map[string]CacheOptions{
		// The poll is too slow to pass: only NOTIFY can.
		"listen": {PollInterval: time.Hour},
		// PgBouncer in transaction mode: the poll alone.
		"poll only": {PollOnly: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dbURL := testdb.New(t)
			pools := make([]*pgxpool.Pool, 2)
			for i := range pools {
				p, err := pgxpool.New(context.Background(), dbURL)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(p.Close)
				pools[i] = p
			}
			keys := keyring(t, newKey64(t))
			s := NewStore(pools[0], keys)
			ws := newWorkspace(t, pools[0])
			c := startCache(t, pools[1], keys, opts)
			if _, err := verifies(c, ws, "polar_whs_replica_secret_01"); !errors.Is(err, ErrNoSecret) {
				t.Fatalf("before any secret: %v", err)
			}

			sec := add(t, s, ws, Sandbox, "polar_whs_replica_secret_01")
			took := testkit.Within(t, 5*time.Second, "the added secret verifies", func() bool {
				env, err := verifies(c, ws, "polar_whs_replica_secret_01")
				return err == nil && env == Sandbox
			})
			t.Logf("%s: an added secret took %s to reach the other replica", name, took)

			if _, err := s.Remove(context.Background(), sec.ID); err != nil {
				t.Fatal(err)
			}
			testkit.Within(t, 5*time.Second, "the removed secret stops verifying", func() bool {
				_, err := verifies(c, ws, "polar_whs_replica_secret_01")
				return errors.Is(err, ErrNoSecret)
			})

			// A workspace deleted by the storefront takes its secrets along,
			// in the cache too.
			add(t, s, ws, Production, "polar_whs_replica_secret_02")
			testkit.Within(t, 5*time.Second, "the second secret verifies", func() bool {
				_, err := verifies(c, ws, "polar_whs_replica_secret_02")
				return err == nil
			})
			if _, err := pools[0].Exec(context.Background(), `DELETE FROM workspaces WHERE id = $1`, ws); err != nil {
				t.Fatal(err)
			}
			testkit.Within(t, 5*time.Second, "the deleted workspace's secret stops verifying", func() bool {
				_, err := verifies(c, ws, "polar_whs_replica_secret_02")
				return errors.Is(err, ErrNoSecret)
			})
		})
	}
}

func TestRotation(t *testing.T) {
	pool := testdb.NewPool(t)
	keys := keyring(t, newKey64(t))
	s := NewStore(pool, keys)
	ws := newWorkspace(t, pool)
	const oldSecret, newSecret = "polar_whs_before_rotation_1", "whsec_afterRotationSecretNotBase64Really2"
	old := add(t, s, ws, Production, oldSecret)
	c := startCache(t, pool, keys, CacheOptions{})
	if _, err := verifies(c, ws, newSecret); !errors.Is(err, ErrUnverified) {
		t.Fatalf("the new secret before it is added: %v", err)
	}

	add(t, s, ws, Production, newSecret)
	testkit.Within(t, 5*time.Second, "the new secret verifies", func() bool {
		_, err := verifies(c, ws, newSecret)
		return err == nil
	})
	if _, err := verifies(c, ws, oldSecret); err != nil {
		t.Fatalf("the old secret during rotation: %v", err)
	}

	if _, err := s.Remove(context.Background(), old.ID); err != nil {
		t.Fatal(err)
	}
	testkit.Within(t, 5*time.Second, "the removed old secret fails", func() bool {
		_, err := verifies(c, ws, oldSecret)
		return errors.Is(err, ErrUnverified)
	})
	if _, err := verifies(c, ws, newSecret); err != nil {
		t.Errorf("the new secret after the old one went: %v", err)
	}
}

// TestFailedReloadKeepsLastState breaks the database under a running cache.
func TestFailedReloadKeepsLastState(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	keys := keyring(t, newKey64(t))
	s := NewStore(pool, keys)
	ws := newWorkspace(t, pool)
	add(t, s, ws, Production, "polar_whs_kept_through_outage")
	logs := &testkit.SyncBuffer{}
	c := startCache(t, pool, keys, CacheOptions{PollOnly: true, PollInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})

	if _, err := pool.Exec(ctx, `ALTER TABLE endpoint_secrets_generation RENAME TO endpoint_secrets_generation_gone`); err != nil {
		t.Fatal(err)
	}
	testkit.Within(t, 5*time.Second, "a failed refresh is counted", func() bool {
		return value(c.metrics.reloads.WithLabelValues("error")) >= 3
	})
	if _, err := verifies(c, ws, "polar_whs_kept_through_outage"); err != nil {
		t.Errorf("during the outage: %v", err)
	}
	if n := strings.Count(logs.String(), "refresh failed"); n != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", n, logs.String())
	}

	if _, err := pool.Exec(ctx, `ALTER TABLE endpoint_secrets_generation_gone RENAME TO endpoint_secrets_generation`); err != nil {
		t.Fatal(err)
	}
	add(t, s, ws, Sandbox, "polar_whs_added_after_outage")
	testkit.Within(t, 5*time.Second, "a secret added after the outage verifies", func() bool {
		_, err := verifies(c, ws, "polar_whs_added_after_outage")
		return err == nil
	})
	if !strings.Contains(logs.String(), "refresh works again") {
		t.Errorf("the recovery was not logged:\n%s", logs.String())
	}

	// A row no key opens is skipped, loudly; the rest still verify.
	other := NewStore(pool, keyring(t, newKey64(t)))
	ws2 := newWorkspace(t, pool)
	if _, err := pool.Exec(ctx, `DELETE FROM endpoint_secrets`); err != nil { // so other may add
		t.Fatal(err)
	}
	add(t, s, ws, Production, "polar_whs_kept_through_outage")
	if _, err := other.Add(ctx, ws2, Production, "polar_whs_under_a_foreign_key"); err == nil {
		t.Fatal("a foreign key added beside rows it cannot read")
	}
	if _, err := pool.Exec(ctx, `UPDATE endpoint_secrets SET key_id = 'deadbeef'`); err != nil {
		t.Fatal(err)
	}
	testkit.Within(t, 5*time.Second, "the unreadable row is counted", func() bool {
		return value(c.metrics.unreadable) == 1
	})
	if _, err := verifies(c, ws, "polar_whs_kept_through_outage"); !errors.Is(err, ErrNoSecret) {
		t.Errorf("an unreadable row verifies: %v", err)
	}
	if !strings.Contains(logs.String(), "cannot decrypt a secret") || strings.Contains(logs.String(), "polar_whs_") {
		t.Errorf("the unreadable row's log:\n%s", logs.String())
	}
}

func TestCacheNotStarted(t *testing.T) {
	c, err := NewCache(nil, keyring(t), CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Verify("0b7f4e2a-3c1d-4e5f-8a9b-0c1d2e3f4a5b", nil, nil); !errors.Is(err, ErrNotReady) {
		t.Errorf("verify before start: %v", err)
	}
	c.Close() // harmless
	reg := prometheus.NewRegistry()
	if _, err := NewCache(nil, nil, CacheOptions{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCache(nil, nil, CacheOptions{Registerer: reg}); err == nil {
		t.Error("a second cache registered the same metrics")
	}
}

// TestUnconnectedWorkspaceLooksConnected: a delivery to a workspace without
// secrets gets the answer, and costs the HMAC, that a wrong signature to a
// connected one does, so that nobody can list the connected workspaces.
func TestUnconnectedWorkspaceLooksConnected(t *testing.T) {
	pool := testdb.NewPool(t)
	keys := keyring(t, newKey64(t))
	connected, unconnected := newWorkspace(t, pool), newWorkspace(t, pool)
	add(t, NewStore(pool, keys), connected, Production, "polar_whs_connected_secret_01")
	c := startCache(t, pool, keys, CacheOptions{})

	body := []byte(`{"type":"order.paid"}`)
	for name, header := range map[string]http.Header{
		"wrong secret":  signed("polar_whs_attackers_guess_0001", body),
		"old timestamp": signedAt("polar_whs_attackers_guess_0001", body, time.Now().Add(-10*time.Minute)),
		"no headers":    {},
	} {
		var texts []string
		for _, ws := range []string{connected, unconnected, "00000000-0000-4000-8000-000000000000"} {
			before := c.verifications.Load()
			_, _, err := c.Verify(ws, body, header)
			if !errors.Is(err, ErrUnverified) {
				t.Errorf("%s to %s: %v, want ErrUnverified", name, ws, err)
			}
			if got := c.verifications.Load() - before; got != 1 {
				t.Errorf("%s to %s: %d verifier calls, want 1", name, ws, got)
			}
			texts = append(texts, errText(err))
		}
		if texts[0] != texts[1] || texts[1] != texts[2] {
			t.Errorf("%s: the connected and unconnected workspaces' answers differ: %q", name, texts)
		}
	}
}

// TestReplicaWithoutTheNewKeyKeepsVerifyingAfterRekey: a replica still on
// the old key, when another rekeys to a new one, keeps verifying with the
// secrets it had decrypted, and says so in its metrics; a secret added
// under the new key it cannot read, and a removed one it drops.
func TestReplicaWithoutTheNewKeyKeepsVerifyingAfterRekey(t *testing.T) {
	pool := testdb.NewPool(t)
	oldKey, newKey := newKey64(t), newKey64(t)
	oldOnly := keyring(t, oldKey)
	rotating := NewStore(pool, keyring(t, newKey, oldKey))
	ws := newWorkspace(t, pool)
	const prodSecret, sandSecret, later = "polar_whs_before_the_rekey_01", "polar_whs_sandbox_before_rekey", "polar_whs_added_after_rekey_01"
	add(t, NewStore(pool, oldOnly), ws, Production, prodSecret)
	sand := add(t, NewStore(pool, oldOnly), ws, Sandbox, sandSecret)
	c := startCache(t, pool, oldOnly, CacheOptions{Registerer: prometheus.NewRegistry()})
	reloads := func() float64 { return value(c.metrics.reloads.WithLabelValues("ok")) }

	before := reloads()
	if n, err := rotating.Rekey(context.Background()); err != nil || n != 2 {
		t.Fatalf("rekey: %d, %v", n, err)
	}
	testkit.Within(t, 5*time.Second, "the replica reloads after the rekey", func() bool { return reloads() > before })
	for secret, env := range map[string]string{prodSecret: Production, sandSecret: Sandbox} {
		if got, err := verifies(c, ws, secret); err != nil || got != env {
			t.Errorf("after the rekey, the old key's replica verifies the %s secret: %q, %v", env, got, err)
		}
	}
	if u, k := value(c.metrics.unreadable), value(c.metrics.kept); u != 2 || k != 2 {
		t.Errorf("relay_endpoint_secrets_unreadable = %v, _kept = %v; want 2, 2", u, k)
	}

	add(t, rotating, ws, Production, later)
	if _, err := rotating.Remove(context.Background(), sand.ID); err != nil {
		t.Fatal(err)
	}
	testkit.Within(t, 5*time.Second, "the removed secret stops verifying", func() bool {
		_, err := verifies(c, ws, sandSecret)
		return errors.Is(err, ErrUnverified)
	})
	if _, err := verifies(c, ws, later); !errors.Is(err, ErrUnverified) {
		t.Errorf("a secret only the new key opens: %v, want unverified on the old key's replica", err)
	}
	if _, err := verifies(c, ws, prodSecret); err != nil {
		t.Errorf("the kept production secret after more changes: %v", err)
	}
	if u, k := value(c.metrics.unreadable), value(c.metrics.kept); u != 2 || k != 1 {
		t.Errorf("relay_endpoint_secrets_unreadable = %v, _kept = %v; want 2, 1", u, k)
	}
}
