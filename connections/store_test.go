package connections_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/testdb"
)

func newKey64() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func keyring(t *testing.T, keys ...string) *endpoints.Keyring {
	t.Helper()
	k, err := endpoints.ParseKeyring(func(v string) string {
		if v == endpoints.EnvKey {
			return strings.Join(keys, ",")
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func setup(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	dbURL := testdb.New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, dbURL
}

func newWorkspace(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var id string
	if err := pool.QueryRow(context.Background(), `INSERT INTO workspaces (name) VALUES ('shop') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

const (
	prodToken    = "polar_oat_ProductionTokenForTestsAbcdefghijklmnopqrstu1234"
	sandboxToken = "polar_oat_SandboxTokenForTestsZyxwvutsrqponmlkjihgfedc9876"
)

func TestStoreConnections(t *testing.T) {
	ctx := context.Background()
	pool, _ := setup(t)
	s := connections.NewStore(pool, keyring(t, newKey64()))
	ws, other := newWorkspace(t, pool), newWorkspace(t, pool)
	org := "9d3c1f2e-52a4-4c59-9a57-0c2b7f4e8a11"
	ep := "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"

	c, err := s.Put(ctx, ws, "production", prodToken, org, connections.Endpoint{ID: ep, URL: "https://relay.example/webhooks/polar/" + ws, State: connections.StateEnabled, Registered: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenLast4 != "1234" || c.OrganizationID != org || c.EndpointID != ep || c.State != "enabled" || !c.Registered || c.StateCheckedAt == nil || c.LastReconcile != nil {
		t.Errorf("put: %+v", c)
	}
	if _, err := s.Put(ctx, ws, "sandbox", sandboxToken, "", connections.Endpoint{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, other, "production", prodToken+"x", "", connections.Endpoint{}); err != nil {
		t.Fatal(err)
	}

	cr, err := s.Credentials(ctx, ws, "production")
	if err != nil || cr.Token != prodToken || cr.ID != c.ID {
		t.Fatalf("credentials: %v %+v", err, cr.Connection)
	}
	if cr, err := s.Credentials(ctx, ws, "sandbox"); err != nil || cr.Token != sandboxToken || cr.State != connections.StateUnknown || cr.StateCheckedAt != nil {
		t.Fatalf("sandbox credentials: %v %+v", err, cr.Connection)
	}
	all, err := s.AllCredentials(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("all credentials: %v, %d", err, len(all))
	}
	if list, err := s.List(ctx, ws); err != nil || len(list) != 2 || list[0].Environment != "production" || list[1].Environment != "sandbox" {
		t.Fatalf("list: %v %+v", err, list)
	}

	// State updates.
	if err := s.SetState(ctx, c.ID, connections.StateDisabled); err != nil {
		t.Fatal(err)
	}
	if err := s.SetState(ctx, c.ID, "sleepy"); !errors.Is(err, connections.ErrInvalid) {
		t.Errorf("an unknown state: %v", err)
	}
	at := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	if err := s.RecordReconciliation(ctx, c.ID, connections.Reconciliation{At: at, Result: "ok", Findings: 3}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, ws, "production")
	if err != nil || got.State != "disabled" || got.LastReconcile == nil || !got.LastReconcile.At.Equal(at) ||
		got.LastReconcile.Result != "ok" || got.LastReconcile.Findings != 3 {
		t.Fatalf("after updates: %v %+v", err, got)
	}

	// Replacing the token keeps the row and its last reconciliation.
	rep, err := s.Put(ctx, ws, "production", prodToken[:len(prodToken)-4]+"5678", "", connections.Endpoint{ID: ep, State: connections.StateEnabled})
	if err != nil || rep.ID != c.ID || rep.TokenLast4 != "5678" || rep.OrganizationID != org || rep.LastReconcile == nil || !rep.Registered {
		t.Fatalf("replace: %v %+v", err, rep)
	}

	// Bad input.
	for _, tc := range []struct{ ws, env, token string }{
		{"nope", "production", prodToken}, {ws, "staging", prodToken}, {ws, "production", "short"},
		{ws, "production", "polar_oat_has a space in it 12345"},
	} {
		if _, err := s.Put(ctx, tc.ws, tc.env, tc.token, "", connections.Endpoint{}); !errors.Is(err, connections.ErrInvalid) {
			t.Errorf("put %q %q: %v, want ErrInvalid", tc.ws, tc.env, err)
		} else if strings.Contains(err.Error(), tc.token) {
			t.Errorf("the error quotes the token: %v", err)
		}
	}
	if _, err := s.Put(ctx, "00000000-0000-4000-8000-00000000dead", "production", prodToken, "", connections.Endpoint{}); !errors.Is(err, connections.ErrNotFound) {
		t.Errorf("an unknown workspace: %v", err)
	}

	// Remove.
	if _, err := s.Remove(ctx, ws, "sandbox"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove(ctx, ws, "sandbox"); !errors.Is(err, connections.ErrNotFound) {
		t.Errorf("remove twice: %v", err)
	}
	if _, err := s.Credentials(ctx, ws, "sandbox"); !errors.Is(err, connections.ErrNotFound) {
		t.Errorf("credentials of a removed connection: %v", err)
	}
}

// TestTokenBoundToItsRow: a token's ciphertext copied onto another
// workspace's row does not decrypt there.
func TestTokenBoundToItsRow(t *testing.T) {
	ctx := context.Background()
	pool, _ := setup(t)
	s := connections.NewStore(pool, keyring(t, newKey64()))
	ws, other := newWorkspace(t, pool), newWorkspace(t, pool)
	for _, w := range []string{ws, other} {
		if _, err := s.Put(ctx, w, "production", prodToken, "", connections.Endpoint{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `UPDATE polar_connections SET token_ciphertext = (SELECT token_ciphertext FROM polar_connections WHERE workspace_id = $1)
		WHERE workspace_id = $2`, ws, other); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Credentials(ctx, other, "production"); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Errorf("a copied ciphertext: %v", err)
	}
	if err := s.Check(ctx); err == nil {
		t.Error("Check passes with a token that does not decrypt")
	}
}

// TestRekeyCoversTokens: after a rekey to a new key, the old key can go.
func TestRekeyCoversTokens(t *testing.T) {
	ctx := context.Background()
	pool, _ := setup(t)
	oldKey, newKey := newKey64(), newKey64()
	ws := newWorkspace(t, pool)
	if _, err := connections.NewStore(pool, keyring(t, oldKey)).Put(ctx, ws, "sandbox", sandboxToken, "", connections.Endpoint{}); err != nil {
		t.Fatal(err)
	}
	// A store without the old key refuses to add beside what it cannot open.
	if _, err := connections.NewStore(pool, keyring(t, newKey)).Put(ctx, ws, "production", prodToken, "", connections.Endpoint{}); err == nil {
		t.Error("put under a keyring lacking the stored token's key")
	}
	n, err := connections.NewStore(pool, keyring(t, newKey, oldKey)).Rekey(ctx)
	if err != nil || n != 1 {
		t.Fatalf("rekey: %d, %v", n, err)
	}
	s := connections.NewStore(pool, keyring(t, newKey))
	if err := s.Check(ctx); err != nil {
		t.Fatalf("check with the new key alone: %v", err)
	}
	if cr, err := s.Credentials(ctx, ws, "sandbox"); err != nil || cr.Token != sandboxToken {
		t.Fatalf("credentials after rekey: %v", err)
	}
	if _, err := connections.NewStore(pool, keyring(t, oldKey)).Credentials(ctx, ws, "sandbox"); err == nil {
		t.Error("the old key still opens the token after rekey")
	}
}

// TestTokenAbsentFromDump dumps the whole database as a backup would.
func TestTokenAbsentFromDump(t *testing.T) {
	ctx := context.Background()
	pool, dbURL := setup(t)
	s := connections.NewStore(pool, keyring(t, newKey64()))
	ws := newWorkspace(t, pool)
	for env, tok := range map[string]string{"production": prodToken, "sandbox": sandboxToken} {
		if _, err := s.Put(ctx, ws, env, tok, "", connections.Endpoint{}); err != nil {
			t.Fatal(err)
		}
	}
	pgDump := "/usr/lib/postgresql/15/bin/pg_dump"
	if _, err := os.Stat(pgDump); err != nil {
		if pgDump, err = exec.LookPath("pg_dump"); err != nil {
			t.Fatal("pg_dump is neither in /usr/lib/postgresql/15/bin nor on PATH")
		}
	}
	var stderr bytes.Buffer
	cmd := exec.Command(pgDump, "--no-owner", "--dbname", dbURL)
	cmd.Stderr = &stderr
	dump, err := cmd.Output()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, stderr.String())
	}
	if !bytes.Contains(dump, []byte("COPY public.polar_connections")) || !bytes.Contains(dump, []byte("\tsandbox\t")) {
		t.Fatalf("the dump lacks the polar_connections rows:\n%s", dump)
	}
	for _, tok := range []string{prodToken, sandboxToken} {
		for _, form := range []string{tok, tok[len(tok)-12:], hex.EncodeToString([]byte(tok)), base64.StdEncoding.EncodeToString([]byte(tok))} {
			if bytes.Contains(bytes.ToLower(dump), bytes.ToLower([]byte(form))) {
				t.Errorf("the dump contains the token %q as %q", tok, form)
			}
		}
	}
}
