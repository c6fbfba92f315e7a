package endpoints

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
)

// newWorkspace writes a storefront workspace and returns its id.
func newWorkspace(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var id string
	if err := pool.QueryRow(context.Background(), `INSERT INTO workspaces (name) VALUES ('shop') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func add(t *testing.T, s *Store, ws, env, secret string) Secret {
	t.Helper()
	sec, err := s.Add(context.Background(), ws, env, secret)
	if err != nil {
		t.Fatalf("add %s secret to %s: %v", env, ws, err)
	}
	return sec
}

func TestStoreAddListRemove(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	s := NewStore(pool, keyring(t, newKey64(t)))
	ws1, ws2 := newWorkspace(t, pool), newWorkspace(t, pool)

	for name, c := range map[string]struct {
		ws, env, secret string
		want            error
	}{
		"workspace not a UUID":  {"shop-1", Production, "polar_whs_valid_secret_1234", ErrInvalid},
		"workspace unknown":     {"00000000-0000-4000-8000-000000000000", Production, "polar_whs_valid_secret_1234", ErrNotFound},
		"environment":           {ws1, "staging", "polar_whs_valid_secret_1234", ErrInvalid},
		"environment case":      {ws1, "Production", "polar_whs_valid_secret_1234", ErrInvalid},
		"empty secret":          {ws1, Production, "", ErrInvalid},
		"short secret":          {ws1, Production, "whsec_short", ErrInvalid},
		"secret with newline":   {ws1, Production, "polar_whs_valid_secret_1234\n", ErrInvalid},
		"secret with space":     {ws1, Production, "polar_whs_valid secret_1234", ErrInvalid},
		"secret with control":   {ws1, Production, "polar_whs_valid\x00secret_1234", ErrInvalid},
		"secret not UTF-8":      {ws1, Production, "polar_whs_valid_secret_\xff\xfe", ErrInvalid},
		"secret far too long":   {ws1, Production, strings.Repeat("x", 1025), ErrInvalid},
		"no key to encrypt":     {ws1, Production, "polar_whs_valid_secret_1234", ErrNoKey},
		"still not a UUID (ws)": {"' OR 1=1 --", Sandbox, "polar_whs_valid_secret_1234", ErrInvalid},
	} {
		store := s
		if c.want == ErrNoKey {
			store = NewStore(pool, keyring(t))
		}
		_, err := store.Add(ctx, c.ws, c.env, c.secret)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
		if err != nil && c.secret != "" && strings.Contains(err.Error(), strings.TrimSpace(c.secret)) {
			t.Errorf("%s: the error quotes the secret: %v", name, err)
		}
	}

	a := add(t, s, ws1, Production, "polar_whs_first_secret_abcd")
	b := add(t, s, strings.ToUpper(ws1), Sandbox, "whsec_second_secret_ünï€")
	c := add(t, s, ws2, Production, "polar_whs_third_secret_wxyz")
	if a.Last4 != "abcd" || b.Last4 != "ünï€" || c.Last4 != "wxyz" || b.Workspace != ws1 || a.CreatedAt.IsZero() {
		t.Fatalf("added %+v %+v %+v", a, b, c)
	}

	all, err := s.List(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("list: %v %+v", err, all)
	}
	only1, err := s.List(ctx, ws1)
	if err != nil || len(only1) != 2 || only1[0].ID != a.ID || only1[1].ID != b.ID {
		t.Fatalf("list %s: %v %+v", ws1, err, only1)
	}
	if _, err := s.List(ctx, "nope"); !errors.Is(err, ErrInvalid) {
		t.Errorf("list of a non-UUID workspace: %v", err)
	}

	// Remove is all or nothing.
	unknown := "00000000-0000-4000-8000-000000000001"
	if _, err := s.Remove(ctx, a.ID, unknown); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), unknown) {
		t.Errorf("remove with an unknown id: %v", err)
	}
	if _, err := s.Remove(ctx, a.ID, "a-typo"); !errors.Is(err, ErrInvalid) {
		t.Errorf("remove with a non-UUID: %v", err)
	}
	if _, err := s.Remove(ctx); !errors.Is(err, ErrInvalid) {
		t.Errorf("remove of nothing: %v", err)
	}
	if all, _ := s.List(ctx, ""); len(all) != 3 {
		t.Fatalf("a failed remove removed something: %d left", len(all))
	}
	removed, err := s.Remove(ctx, strings.ToUpper(a.ID), c.ID, a.ID)
	if err != nil || len(removed) != 2 {
		t.Fatalf("remove: %v %+v", err, removed)
	}
	if left, _ := s.List(ctx, ""); len(left) != 1 || left[0].ID != b.ID {
		t.Errorf("left after remove: %+v", left)
	}

	// Deleting a workspace takes its secrets with it.
	if _, err := pool.Exec(ctx, `DELETE FROM workspaces WHERE id = $1`, ws1); err != nil {
		t.Fatal(err)
	}
	if left, _ := s.List(ctx, ""); len(left) != 0 {
		t.Errorf("secrets outlive their workspace: %+v", left)
	}
}

// TestCheckAndWrongKey is what relay serve does at start.
func TestCheckAndWrongKey(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	right, wrong := newKey64(t), newKey64(t)

	// Nothing stored: no key is needed.
	if err := NewStore(pool, keyring(t)).Check(ctx); err != nil {
		t.Fatalf("check of an empty table without a key: %v", err)
	}
	s := NewStore(pool, keyring(t, right))
	ws := newWorkspace(t, pool)
	sec := add(t, s, ws, Production, "polar_whs_check_secret_0001")
	if err := s.Check(ctx); err != nil {
		t.Fatalf("check with the right key: %v", err)
	}
	if err := NewStore(pool, keyring(t)).Check(ctx); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "1 endpoint secret(s) are stored") {
		t.Errorf("check without a key: %v", err)
	}
	want := "RELAY_SECRETS_KEY cannot decrypt endpoint secret " + sec.ID + " of workspace " + ws + ": wrong key?"
	err := NewStore(pool, keyring(t, wrong)).Check(ctx)
	if err == nil || err.Error() != want {
		t.Errorf("check with the wrong key: %v\nwant %s", err, want)
	}
	fromFile, err := ParseKeyring(envFunc(map[string]string{EnvKeyFile: writeTemp(t, wrong+"\n")}))
	if err != nil {
		t.Fatal(err)
	}
	if err := NewStore(pool, fromFile).Check(ctx); err == nil || !strings.HasPrefix(err.Error(), "RELAY_SECRETS_KEY_FILE cannot decrypt") {
		t.Errorf("check with the wrong key from a file: %v", err)
	}
	// Nor may a wrong key add: the servers could not read what it wrote.
	if _, err := NewStore(pool, keyring(t, wrong)).Add(ctx, ws, Sandbox, "polar_whs_check_secret_0002"); err == nil || err.Error() != want {
		t.Errorf("add with the wrong key: %v", err)
	}
}

// TestCiphertextOnAnotherRowFails copies one row's ciphertext onto a row of
// another workspace, as someone with write access to the database might.
func TestCiphertextOnAnotherRowFails(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	s := NewStore(pool, keyring(t, newKey64(t)))
	wsA, wsB := newWorkspace(t, pool), newWorkspace(t, pool)
	a := add(t, s, wsA, Production, "polar_whs_workspace_a_secret")
	b := add(t, s, wsB, Production, "polar_whs_workspace_b_secret")
	c := add(t, s, wsA, Sandbox, "polar_whs_workspace_a_sandbox")
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	for _, victim := range []Secret{b, c} { // another workspace; another environment
		if _, err := pool.Exec(ctx, `UPDATE endpoint_secrets v SET ciphertext = a.ciphertext, key_id = a.key_id
			FROM endpoint_secrets a WHERE a.id = $1 AND v.id = $2`, a.ID, victim.ID); err != nil {
			t.Fatal(err)
		}
		err := s.Check(ctx)
		if err == nil || !strings.Contains(err.Error(), "endpoint secret "+victim.ID+" of workspace "+victim.Workspace) {
			t.Errorf("check after copying a's ciphertext onto %s: %v", victim.ID, err)
		}
		if _, err := pool.Exec(ctx, `DELETE FROM endpoint_secrets WHERE id = $1`, victim.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Check(ctx); err != nil {
		t.Errorf("check after removing the swapped rows: %v", err)
	}
}

func TestRekey(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	oldKey, newKey := newKey64(t), newKey64(t)
	old := NewStore(pool, keyring(t, oldKey))
	ws1, ws2 := newWorkspace(t, pool), newWorkspace(t, pool)
	secrets := map[string]string{ws1: "polar_whs_rekey_one_000001", ws2: "polar_whs_rekey_two_000002"}
	for ws, sec := range secrets {
		add(t, old, ws, Production, sec)
	}
	add(t, old, ws1, Sandbox, "polar_whs_rekey_one_sandbox")

	// Without the old key nothing can be rekeyed, and nothing changes.
	if _, err := NewStore(pool, keyring(t, newKey)).Rekey(ctx); err == nil || !strings.Contains(err.Error(), "cannot decrypt endpoint secret") {
		t.Fatalf("rekey without the old key: %v", err)
	}
	if _, err := NewStore(pool, keyring(t)).Rekey(ctx); !errors.Is(err, ErrNoKey) {
		t.Errorf("rekey without keys: %v", err)
	}
	if err := old.Check(ctx); err != nil {
		t.Fatalf("a failed rekey changed the rows: %v", err)
	}

	gen := generation(t, pool)
	n, err := NewStore(pool, keyring(t, newKey, oldKey)).Rekey(ctx)
	if err != nil || n != 3 {
		t.Fatalf("rekey: %d, %v", n, err)
	}
	if got := generation(t, pool); got != gen+1 {
		t.Errorf("rekey moved the generation %d → %d, want one step", gen, got)
	}
	// The old key may go now.
	newOnly := keyring(t, newKey)
	if err := NewStore(pool, newOnly).Check(ctx); err != nil {
		t.Fatalf("check with only the new key after rekey: %v", err)
	}
	if err := old.Check(ctx); err == nil {
		t.Error("the old key still decrypts after rekey")
	}
	cache := startCache(t, pool, newOnly, CacheOptions{})
	for ws, sec := range secrets {
		if _, env, err := cache.Verify(ws, []byte(`{}`), signed(sec, []byte(`{}`))); err != nil || env != Production {
			t.Errorf("after rekey, %s's secret: %s, %v", ws, env, err)
		}
	}
}

func generation(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var g int64
	if err := pool.QueryRow(context.Background(), `SELECT generation FROM endpoint_secrets_generation`).Scan(&g); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestSecretAbsentFromDump dumps the whole database as a backup would.
func TestSecretAbsentFromDump(t *testing.T) {
	dbURL := testdb.New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s := NewStore(pool, keyring(t, newKey64(t)))
	ws := newWorkspace(t, pool)
	secrets := []string{"polar_whs_dumpTestSecretNumberOne", "whsec_dumpTestSecretNumberTwoWithMore"}
	add(t, s, ws, Production, secrets[0])
	add(t, s, ws, Sandbox, secrets[1])

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
	// The rows are in the dump (their last 4 are), the secrets in no form.
	if !bytes.Contains(dump, []byte("COPY public.endpoint_secrets")) || !bytes.Contains(dump, []byte("\tsandbox\t")) {
		t.Fatalf("the dump lacks the endpoint_secrets rows:\n%s", dump)
	}
	for _, sec := range secrets {
		for _, form := range []string{sec, sec[len(sec)-12:], hex.EncodeToString([]byte(sec)), base64.StdEncoding.EncodeToString([]byte(sec))} {
			if bytes.Contains(bytes.ToLower(dump), bytes.ToLower([]byte(form))) {
				t.Errorf("the dump contains the secret %q as %q", sec, form)
			}
		}
	}
}
