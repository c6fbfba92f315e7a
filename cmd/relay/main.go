// Command relay receives Polar webhooks durably and books paid orders into
// the finance ledger. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: relay <command> [flags]

commands:
  serve     run the webhook receiver and the worker pool [--role all|receiver|worker]
  migrate   apply relay's and River's database migrations
  send      sign a payload as Polar does and POST it
  jobs      list, retry, cancel or delete River jobs (relay jobs --help)
  inbox     list, show or replay stored webhooks (relay inbox --help)
  endpoints add, list, remove or rekey workspaces' webhook secrets (relay endpoints --help)
  connect   connect a workspace's Polar organization: token on stdin (relay connect --help)
  connections list workspaces' Polar connections (relay connections --help)
  disconnect remove a workspace's Polar token
  reconcile  one reconciliation pass with Polar's API now (relay reconcile --help)
  bookings  list pending bookings or post them now (relay bookings --help)
  spool     list, show, retry or drop webhooks the spool set aside (relay spool --help)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

// run is the whole program, so tests can drive it like a shell would.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	err := command(ctx, args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) { // -h: the usage asked for is printed
		return nil
	}
	// Whatever reported it, the database's password is not printed.
	return redactErr(err, getenv("DATABASE_URL"))
}

func command(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return fmt.Errorf("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(ctx, rest, getenv, stdout)
	case "migrate":
		return migrate(ctx, rest, getenv, stdout)
	case "send":
		return send(ctx, rest, getenv, stdout)
	case "jobs":
		return jobsCmd(ctx, rest, getenv, stdout)
	case "inbox":
		return inboxCmd(ctx, rest, getenv, stdout)
	case "endpoints":
		return endpointsCmd(ctx, rest, getenv, os.Stdin, stdout)
	case "connect":
		return connectCmd(ctx, rest, getenv, os.Stdin, os.Stderr, stdout)
	case "connections":
		return connectionsCmd(ctx, rest, getenv, stdout)
	case "disconnect":
		return disconnectCmd(ctx, rest, getenv, stdout)
	case "reconcile":
		return reconcileCmd(ctx, rest, getenv, stdout)
	case "bookings":
		return bookingsCmd(ctx, rest, getenv, stdout)
	case "spool":
		return spoolCmd(ctx, rest, getenv, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stdout, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}
