package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testkit"
)

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

// serveInProcess runs relay serve with env until t ends, waits until its
// admin listener is ready, and returns its log.
func serveInProcess(t *testing.T, env map[string]string) *testkit.SyncBuffer {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	logs := &testkit.SyncBuffer{}
	done, exited := make(chan error, 1), make(chan struct{})
	go func() {
		done <- run(ctx, []string{"serve"}, envFunc(env), logs)
		close(exited)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30s")
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		default: // waitFor saw serve exit early and failed the test
		}
		if t.Failed() {
			t.Logf("relay's log:\n%s", logs.String())
		}
	})
	waitFor(t, done, "http://"+env["RELAY_ADMIN_ADDR"]+"/readyz")
	return logs
}
