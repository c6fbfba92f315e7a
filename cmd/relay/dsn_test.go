package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testkit"
)

// TestDatabasePasswordIsNeverPrinted runs relay's commands against a
// database that does not answer (or a DATABASE_URL pgx cannot parse), with
// the password in each form a connection string can hold it: the error
// (what main prints on stderr) and the log (stdout) never show it.
func TestDatabasePasswordIsNeverPrinted(t *testing.T) {
	const pw = "S3cret-pw_9x"
	dsns := map[string]string{
		"URL":                   "postgres://relay:" + pw + "@127.0.0.1:1/relay?connect_timeout=1",
		"URL, escaped":          "postgres://relay:" + strings.ReplaceAll(pw, "-", "%2D") + "%40@127.0.0.1:1/relay?connect_timeout=1",
		"URL query":             "postgres://relay@127.0.0.1:1/relay?connect_timeout=1&password=" + pw,
		"URL pgx cannot parse":  "postgres://relay:" + pw + "%zz@127.0.0.1:1/relay",
		"keyword/value":         "host=127.0.0.1 port=1 user=relay password=" + pw + " dbname=relay connect_timeout=1",
		"keyword/value, quoted": "host=127.0.0.1 port=1 user=relay password = '" + pw + ` \'q' dbname=relay connect_timeout=1`,
		"keyword/value, broken": "host=127.0.0.1 port=1 password='" + pw + " dbname=relay",
	}
	for name, dsn := range dsns {
		t.Run(name, func(t *testing.T) {
			for _, args := range [][]string{{"serve"}, {"serve", "--spool"}, {"migrate"}, {"inbox", "list"}} {
				env := map[string]string{
					"DATABASE_URL": dsn, "POLAR_WEBHOOK_SECRET": "polar_whs_x",
					"RELAY_HTTP_ADDR": testkit.FreeAddr(t), "RELAY_ADMIN_ADDR": testkit.FreeAddr(t),
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				var out testkit.SyncBuffer
				if args[len(args)-1] == "--spool" {
					// With a spool, serve starts without its database and logs why.
					args = args[:1]
					env["RELAY_SPOOL_DIR"] = t.TempDir()
					go func() {
						for ctx.Err() == nil && !strings.Contains(out.String(), "database unreachable at start") &&
							!strings.Contains(out.String(), "DATABASE_URL") {
							time.Sleep(20 * time.Millisecond)
						}
						cancel()
					}()
				}
				err := run(ctx, args, envFunc(env), &out)
				cancel()
				msg := ""
				if err != nil {
					msg = err.Error()
				}
				if msg == "" && !strings.Contains(out.String(), "unreachable") {
					t.Errorf("%s: no error and no log of the database: %q", args, out.String())
				}
				for _, leak := range []string{pw, strings.ReplaceAll(pw, "-", "%2D")} {
					if strings.Contains(msg, leak) {
						t.Errorf("%s: the error shows the password: %s", args, msg)
					}
					if strings.Contains(out.String(), leak) {
						t.Errorf("%s: the log shows the password: %s", args, out.String())
					}
				}
			}
		})
	}
}
