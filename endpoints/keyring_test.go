package endpoints

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// newKey64 returns a fresh key as RELAY_SECRETS_KEY takes it.
func newKey64(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// keyring parses keys as RELAY_SECRETS_KEY would be set to them.
func keyring(t *testing.T, keys ...string) *Keyring {
	t.Helper()
	k, err := ParseKeyring(envFunc(map[string]string{EnvKey: strings.Join(keys, ",")}))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKeyring(t *testing.T) {
	k1, k2 := newKey64(t), newKey64(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	if err := os.WriteFile(file, []byte(k1+"\n"+k2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for name, c := range map[string]struct {
		env     map[string]string
		keys    int
		source  string
		primary string
	}{
		"unset":             {env: nil, keys: 0, source: EnvKey},
		"blank":             {env: map[string]string{EnvKey: " , \n"}, keys: 0, source: EnvKey},
		"one key":           {env: map[string]string{EnvKey: k1}, keys: 1, source: EnvKey, primary: k1},
		"two, comma":        {env: map[string]string{EnvKey: k2 + ", " + k1}, keys: 2, source: EnvKey, primary: k2},
		"two, newline":      {env: map[string]string{EnvKey: k1 + "\r\n" + k2}, keys: 2, source: EnvKey, primary: k1},
		"file, one a line":  {env: map[string]string{EnvKeyFile: file}, keys: 2, source: EnvKeyFile, primary: k1},
		"empty key, file":   {env: map[string]string{EnvKey: "  ", EnvKeyFile: file}, keys: 2, source: EnvKeyFile, primary: k1},
		"trailing newlines": {env: map[string]string{EnvKey: k1 + "\n\n"}, keys: 1, source: EnvKey, primary: k1},
	} {
		k, err := ParseKeyring(envFunc(c.env))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(k.keys) != c.keys || k.Configured() != (c.keys > 0) || k.Source() != c.source {
			t.Errorf("%s: %d keys (configured %v) from %s, want %d from %s", name, len(k.keys), k.Configured(), k.Source(), c.keys, c.source)
		}
		if c.primary != "" {
			raw, _ := base64.StdEncoding.DecodeString(c.primary)
			if k.PrimaryID() != keyID(raw) {
				t.Errorf("%s: the first key does not encrypt", name)
			}
		}
	}

	// Bad keys: the message names the variable and the position, and
	// never the key itself.
	short := base64.StdEncoding.EncodeToString([]byte("sixteen byte key"))
	notB64 := "this-is-not-base64-but-a-key-someone-typed!"
	for name, c := range map[string]struct {
		env  map[string]string
		want string
	}{
		"not base64":  {map[string]string{EnvKey: k1 + "," + notB64}, "RELAY_SECRETS_KEY: key 2 is not base64"},
		"16 bytes":    {map[string]string{EnvKey: short}, "RELAY_SECRETS_KEY: key 1 is 16 bytes, want 32"},
		"repeated":    {map[string]string{EnvKey: k1 + "," + k2 + "," + k1}, "RELAY_SECRETS_KEY: key 3 repeats an earlier key"},
		"both set":    {map[string]string{EnvKey: k1, EnvKeyFile: file}, "set RELAY_SECRETS_KEY or RELAY_SECRETS_KEY_FILE, not both"},
		"no file":     {map[string]string{EnvKeyFile: filepath.Join(dir, "missing")}, "RELAY_SECRETS_KEY_FILE: open"},
		"bad in file": {map[string]string{EnvKeyFile: writeTemp(t, k1+"\n"+short+"\n")}, "RELAY_SECRETS_KEY_FILE: key 2 is 16 bytes"},
	} {
		_, err := ParseKeyring(envFunc(c.env))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, c.want)
			continue
		}
		for _, secret := range []string{k1, k2, short, notB64} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the error echoes key material: %v", name, err)
			}
		}
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSealOpen(t *testing.T) {
	oldKey, newKey := newKey64(t), newKey64(t)
	old := keyring(t, oldKey)
	const id, ws, env = "0b7f4e2a-3c1d-4e5f-8a9b-0c1d2e3f4a5b", "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f", Production
	secret := []byte("polar_whs_seal_open_test_secret")

	ct, kid, err := old.seal(id, ws, env, secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, secret) || kid != old.PrimaryID() || len(ct) != 12+len(secret)+16 {
		t.Fatalf("ciphertext of %d bytes under key %s", len(ct), kid)
	}
	again, _, _ := old.seal(id, ws, env, secret)
	if bytes.Equal(ct, again) {
		t.Error("two seals of the same secret are equal: the nonce is not fresh")
	}
	if got, err := old.open(id, ws, env, kid, ct); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open: %q, %v", got, err)
	}

	// The row's id, workspace and environment are bound: the same bytes
	// under any other row fail.
	tampered := bytes.Clone(ct)
	tampered[len(tampered)-1] ^= 1
	for name, c := range map[string]struct {
		id, ws, env string
		ct          []byte
	}{
		"another row":       {"1b7f4e2a-3c1d-4e5f-8a9b-0c1d2e3f4a5b", ws, env, ct},
		"another workspace": {id, "7f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f", env, ct},
		"sandbox":           {id, ws, Sandbox, ct},
		"tampered":          {id, ws, env, tampered},
		"truncated":         {id, ws, env, ct[:20]},
	} {
		if _, err := old.open(c.id, c.ws, c.env, kid, c.ct); !errors.Is(err, errCannotDecrypt) {
			t.Errorf("%s: %v, want errCannotDecrypt", name, err)
		}
	}

	// Rotation: the new key encrypts, the old one still decrypts.
	both := keyring(t, newKey, oldKey)
	if got, err := both.open(id, ws, env, kid, ct); err != nil || !bytes.Equal(got, secret) {
		t.Errorf("open with the old key second: %q, %v", got, err)
	}
	if _, kid2, _ := both.seal(id, ws, env, secret); kid2 == kid || kid2 != keyring(t, newKey).PrimaryID() {
		t.Error("a rotated keyring does not encrypt with its first key")
	}
	if _, err := keyring(t, newKey).open(id, ws, env, kid, ct); !errors.Is(err, errCannotDecrypt) {
		t.Errorf("open without the old key: %v, want errCannotDecrypt", err)
	}
	// A key_id lying about the key does not make another key try it.
	if _, err := keyring(t, newKey).open(id, ws, env, keyring(t, newKey).PrimaryID(), ct); !errors.Is(err, errCannotDecrypt) {
		t.Errorf("open with the wrong key: %v, want errCannotDecrypt", err)
	}
	if _, _, err := keyring(t).seal(id, ws, env, secret); !errors.Is(err, ErrNoKey) {
		t.Errorf("seal without keys: %v, want ErrNoKey", err)
	}
}
