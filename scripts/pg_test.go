// Package scripts holds the shell scripts behind make run, make test and
// make bench; its tests run them.
package scripts

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testkit"
)

// TestDevClusterInAPrivateDirectory: make run as root from a clone the
// postgres user cannot enter (under /root, say) still gets its cluster: it
// lives under /var/tmp, .data/pg links to it, and the next start finds the
// same cluster with its data.
func TestDevClusterInAPrivateDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("as a non-root user the cluster belongs to that user, who can always enter its own clone: there is nothing to fall back from")
	}
	pgsh := filepath.Join(testkit.RepoRoot(), "scripts", "pg.sh")
	clone := t.TempDir() // 0700, root's
	if err := os.Chmod(clone, 0o700); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(clone, ".data", "pg")
	_, port, err := net.SplitHostPort(testkit.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	sh := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(pgsh, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pg.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := sh("start", data, port)
	target, err := os.Readlink(data)
	if err != nil {
		t.Fatalf(".data/pg is not a link (%v); pg.sh said:\n%s", err, out)
	}
	t.Cleanup(func() {
		sh("stop", data)
		os.RemoveAll(target)
		os.Remove(target + ".initdb.log")
	})
	if !strings.HasPrefix(target, "/var/tmp/relay-pg-") || !strings.Contains(out, "cannot enter "+clone) {
		t.Fatalf(".data/pg links to %s, pg.sh said %q; want a cluster under /var/tmp/relay-pg-, and why", target, out)
	}

	url := strings.TrimSpace(sh("url", port))
	query := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := query(`CREATE TABLE kept (id int)`); err != nil {
		t.Fatalf("the cluster does not answer: %v", err)
	}
	sh("start", data, port) // running already: nothing to do
	sh("stop", data)
	if err := query(`SELECT 1`); err == nil {
		t.Fatal("the cluster still answers after pg.sh stop")
	}
	sh("start", data, port)
	if again, err := os.Readlink(data); err != nil || again != target {
		t.Fatalf(".data/pg links to %s (%v) after a restart, want %s", again, err, target)
	}
	if err := query(`SELECT * FROM kept`); err != nil {
		t.Fatalf("the restarted cluster lost what it had: %v", err)
	}
}
