package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polar"
)

// relayStdin runs relay as a shell would, with stdin on its standard input.
// os.Stdin is swapped for the call: run reads it as main does.
func relayStdin(t *testing.T, env map[string]string, stdin string, args ...string) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteString(stdin); err != nil { // fits the pipe's buffer
		t.Fatal(err)
	}
	w.Close()
	saved := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = saved; r.Close() }()
	var out bytes.Buffer
	err = run(context.Background(), args, envFunc(env), &out)
	return out.String(), err
}

func TestEndpointsCommands(t *testing.T) {
	ctx := context.Background()
	dbURL := testdb.New(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ws1 := testkit.SeedShop(t, pool, testkit.ShopOptions{}).WS
	ws2 := testkit.SeedShop(t, pool, testkit.ShopOptions{}).WS
	oldKey := base64.StdEncoding.EncodeToString([]byte("relay-cli-test-key-number-one-01"))
	newKey := base64.StdEncoding.EncodeToString([]byte("relay-cli-test-key-number-two-02"))
	env := map[string]string{"DATABASE_URL": dbURL, "RELAY_SECRETS_KEY": oldKey}
	const (
		prod    = "polar_whs_cli_production_secret_Q7xZ"
		sandbox = "whsec_cliSandboxSecretThatIsNotBase64xyz9"
		other   = "polar_whs_cli_other_workspace_sec_K2pL"
	)
	secrets := []string{prod, sandbox, other}
	noSecret := func(what, out string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(out, s) || strings.Contains(out, s[:len(s)-4]) {
				t.Errorf("%s prints a secret:\n%s", what, out)
			}
		}
	}
	added := regexp.MustCompile(`^added endpoint secret ([0-9a-f-]{36}) \(workspace ([0-9a-f-]{36}), (production|sandbox), last4 (\S{4})\)\n$`)
	addOne := func(ws, environment, stdin string) string {
		t.Helper()
		out, err := relayStdin(t, env, stdin, "endpoints", "add", "--workspace", ws, "--environment", environment)
		m := added.FindStringSubmatch(out)
		if err != nil || m == nil || m[2] != ws || m[3] != environment {
			t.Fatalf("endpoints add: %v\n%s", err, out)
		}
		noSecret("endpoints add", out)
		return m[1]
	}

	// The newline that ends the secret on stdin is not part of it.
	prodID := addOne(ws1, "production", prod+"\n")
	sandboxID := addOne(ws1, "sandbox", sandbox+"\r\n")
	otherID := addOne(ws2, "production", other)

	for name, c := range map[string]struct {
		env   map[string]string
		stdin string
		args  []string
		want  string
	}{
		"no secret on stdin":   {env, "", []string{"add", "--workspace", ws1, "--environment", "sandbox"}, "no secret on stdin"},
		"two lines on stdin":   {env, prod + "\n" + sandbox + "\n", []string{"add", "--workspace", ws1, "--environment", "sandbox"}, "whitespace"},
		"no environment":       {env, prod, []string{"add", "--workspace", ws1}, "needs --workspace and --environment"},
		"bad environment":      {env, prod, []string{"add", "--workspace", ws1, "--environment", "live"}, `environment "live"`},
		"not a workspace":      {env, prod, []string{"add", "--workspace", "shop", "--environment", "sandbox"}, "is not a UUID"},
		"unknown workspace":    {env, prod, []string{"add", "--workspace", "00000000-0000-4000-8000-00000000000a", "--environment", "sandbox"}, "does not exist"},
		"secret as argument":   {env, "", []string{"add", "--workspace", ws1, "--environment", "sandbox", prod}, "takes no arguments"},
		"no key":               {map[string]string{"DATABASE_URL": dbURL}, prod, []string{"add", "--workspace", ws1, "--environment", "sandbox"}, "no secrets key configured"},
		"malformed key":        {map[string]string{"DATABASE_URL": dbURL, "RELAY_SECRETS_KEY": "c2hvcnQ="}, prod, []string{"list"}, "RELAY_SECRETS_KEY: key 1 is 5 bytes"},
		"wrong key":            {map[string]string{"DATABASE_URL": dbURL, "RELAY_SECRETS_KEY": newKey}, prod, []string{"add", "--workspace", ws1, "--environment", "sandbox"}, "cannot decrypt endpoint secret"},
		"remove nothing":       {env, "", []string{"remove"}, "needs endpoint secret ids"},
		"remove unknown":       {env, "", []string{"remove", prodID, "00000000-0000-4000-8000-00000000000b"}, "no endpoint secret 00000000-0000-4000-8000-00000000000b (nothing removed)"},
		"unknown subcommand":   {env, "", []string{"rotate"}, "unknown endpoints subcommand"},
		"no subcommand":        {env, "", nil, "no subcommand given"},
		"list takes no args":   {env, "", []string{"list", ws1}, "takes no arguments"},
		"rekey without a key":  {map[string]string{"DATABASE_URL": dbURL}, "", []string{"rekey"}, "no secrets key configured"},
		"rekey with wrong key": {map[string]string{"DATABASE_URL": dbURL, "RELAY_SECRETS_KEY": newKey}, "", []string{"rekey"}, "cannot decrypt endpoint secret"},
	} {
		out, err := relayStdin(t, c.env, c.stdin, append([]string{"endpoints"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q\n%s", name, err, c.want, out)
		}
		if err != nil {
			noSecret(name, err.Error())
		}
		noSecret(name, out)
	}

	out, err := relayStdin(t, env, "", "endpoints", "list")
	if err != nil {
		t.Fatal(err)
	}
	noSecret("endpoints list", out)
	for _, want := range []string{"ID  ", "LAST4", prodID + "  " + ws1 + "  production   Q7xZ", sandboxID + "  " + ws1 + "  sandbox      xyz9", otherID} {
		if !strings.Contains(out, want) {
			t.Errorf("endpoints list lacks %q:\n%s", want, out)
		}
	}
	out, err = relayStdin(t, env, "", "endpoints", "list", "--workspace", ws2)
	if err != nil || strings.Contains(out, prodID) || !strings.Contains(out, otherID) {
		t.Errorf("endpoints list --workspace: %v\n%s", err, out)
	}

	// Rekey: the new key first, the old one to read; then the old one goes.
	rotating := map[string]string{"DATABASE_URL": dbURL, "RELAY_SECRETS_KEY": newKey + "," + oldKey}
	out, err = relayStdin(t, rotating, "", "endpoints", "rekey")
	if err != nil || !strings.HasPrefix(out, "re-encrypted 3 endpoint secret(s) with the first key of RELAY_SECRETS_KEY") {
		t.Fatalf("endpoints rekey: %v\n%s", err, out)
	}
	env["RELAY_SECRETS_KEY"] = newKey
	keys, err := endpoints.ParseKeyring(envFunc(env))
	if err != nil {
		t.Fatal(err)
	}
	if err := endpoints.NewStore(pool, keys).Check(ctx); err != nil {
		t.Fatalf("after rekey, the new key alone: %v", err)
	}

	// What the CLI stored is the secret, without its newline.
	cache, err := endpoints.NewCache(pool, keys, endpoints.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	body := []byte(`{"type":"order.paid"}`)
	for _, c := range []struct{ ws, secret, env string }{{ws1, prod, "production"}, {ws1, sandbox, "sandbox"}, {ws2, other, "production"}} {
		_, gotEnv, err := cache.Verify(c.ws, body, polar.SignedHeaders(c.secret, "msg_cli_endpoints", time.Now(), body))
		if err != nil || gotEnv != c.env {
			t.Errorf("%s's %s secret added with the CLI: %q, %v", c.ws, c.env, gotEnv, err)
		}
	}

	out, err = relayStdin(t, env, "", "endpoints", "remove", prodID, otherID)
	if err != nil || strings.Count(out, "removed endpoint secret ") != 2 || !strings.Contains(out, prodID) || !strings.Contains(out, otherID) {
		t.Fatalf("endpoints remove: %v\n%s", err, out)
	}
	noSecret("endpoints remove", out)
	out, err = relayStdin(t, env, "", "endpoints", "list")
	if err != nil || strings.Contains(out, prodID) || strings.Contains(out, otherID) || !strings.Contains(out, sandboxID) {
		t.Errorf("list after remove: %v\n%s", err, out)
	}
	out, err = relayStdin(t, env, "", "endpoints", "--help")
	if err != nil || !strings.Contains(out, "relay endpoints add --workspace WS") {
		t.Errorf("endpoints --help: %v\n%s", err, out)
	}
	if _, err := relayStdin(t, env, "", "endpoints", "remove", prodID); !errors.Is(err, endpoints.ErrNotFound) {
		t.Errorf("removing a removed secret: %v", err)
	}
}
