package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testkit"
)

// crashChildDir, set in a child's environment, makes TestAcknowledgedSurviveKill
// the appending child rather than the test.
const crashChildDir = "RELAY_SPOOL_CRASH_CHILD_DIR"

// A process killed with SIGKILL in the middle of its appends loses none that
// it acknowledged: the child prints a webhook id only after Append returned
// nil for it, the test kills it mid-stream, and every printed id is in the
// reopened spool.
func TestAcknowledgedSurviveKill(t *testing.T) {
	if dir := os.Getenv(crashChildDir); dir != "" {
		appendUntilKilled(dir)
		return
	}
	for round, killAfter := range []int{1, 300, 1000} {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestAcknowledgedSurviveKill$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildDir+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked, killed := readAcks(out, killAfter, cmd.Process)
		err = cmd.Wait()
		var exit *exec.ExitError
		if !killed || !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: the child was not killed mid-stream (%d acks, killed %v): %v", round, len(acked), killed, err)
		}

		s := open(t, dir, Options{})
		stored := make(map[string]bool)
		for _, id := range storedIDs(t, s) {
			stored[id] = true
		}
		for _, id := range acked {
			if !stored[id] {
				t.Errorf("round %d: %s was acknowledged and is not in the spool", round, id)
			}
		}
		if st := stats(t, s); st.Events != int64(len(stored)) {
			t.Errorf("round %d: stats count %d events, the spool holds %d", round, st.Events, len(stored))
		}
		checkFile(t, s)
		t.Logf("round %d: killed after %d acknowledged; %d stored", round, len(acked), len(stored))
		s.Close()
	}
}

// readAcks reads the child's acknowledged ids, kills it with SIGKILL once
// killAfter have come, and reads on to the end of its output.
func readAcks(out io.Reader, killAfter int, child *os.Process) (acked []string, killed bool) {
	r := bufio.NewReader(out)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return acked, killed // a line cut short was not acknowledged
		}
		if id, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "acked "); ok {
			acked = append(acked, id)
		}
		if len(acked) == killAfter && !killed {
			killed = child.Signal(syscall.SIGKILL) == nil
		}
	}
}

// appendUntilKilled is the child: as many goroutines as one commit takes
// append and print each acknowledged id in one write. Their appends fill each
// batch at once, so the child spends its time in bbolt's writes and fsyncs,
// where the kill lands. It stops by itself after 30 seconds.
func appendUntilKilled(dir string) {
	s, err := Open(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	deadline := time.Now().Add(30 * time.Second)
	for g := range maxBatch {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				id := fmt.Sprintf("msg_%d_%d", g, i)
				// Bodies of up to 32 KiB: commits that write many pages.
				if err := s.Append(context.Background(), event(id, 100+(g*7919+i*997)%(32<<10))); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "acked %s\n", id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(3) // not killed: the test fails
}

// checkFile runs bbolt's consistency check of s's file.
func checkFile(t *testing.T, s *Spool) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("spool file is inconsistent: %v", err)
	}
}

// A disk that fails a write fails the append: the test mounts a tmpfs of
// 512 KiB (it needs root, as CI has) and appends until the disk is full.
// No append that returned nil is lost, none that failed is reported as
// ErrFull, and once a drain has freed pages, appends work again.
func TestDiskErrorIsAnError(t *testing.T) {
	dir, err := testkit.Tmpfs(t, "512k")
	if err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v): this test needs root", err)
	}

	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var acked []string
	var diskErr error
	for i := range 1000 {
		id := fmt.Sprintf("msg_%d", i)
		if err := s.Append(t.Context(), event(id, 8000)); err != nil {
			diskErr = err
			break
		}
		acked = append(acked, id)
	}
	if diskErr == nil {
		t.Fatal("1000 appends of 8 KB fit on a 512 KiB disk")
	}
	if errors.Is(diskErr, ErrFull) || !strings.Contains(diskErr.Error(), "no space left on device") {
		t.Fatalf("append to a full disk: %v; want the disk's error, not ErrFull", diskErr)
	}
	t.Logf("%d appends acknowledged before: %v", len(acked), diskErr)
	if st := stats(t, s); st.Events != int64(len(acked)) {
		t.Fatalf("stats count %d events, %d acknowledged", st.Events, len(acked))
	}

	// Everything acknowledged is still there after reopening on the full disk.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatalf("reopening a spool on a full disk: %v", err)
	}
	defer s.Close()
	stored := storedIDs(t, s)
	if strings.Join(stored, ",") != strings.Join(acked, ",") {
		t.Fatalf("reopened spool holds %d events, %d were acknowledged", len(stored), len(acked))
	}
	checkFile(t, s)

	// Draining reuses the pages it frees, so the full disk takes appends again.
	n, err := s.Drain(t.Context(), func(context.Context, []*inbox.Event) error { return nil }, 10)
	if err != nil || n != 10 {
		t.Fatalf("drain on a full disk = %d, %v", n, err)
	}
	if err := s.Append(t.Context(), event("after_drain", 8000)); err != nil {
		t.Fatalf("append after a drain on a full disk: %v", err)
	}
}
