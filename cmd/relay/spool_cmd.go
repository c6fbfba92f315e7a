package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/spool"
)

const spoolUsage = `usage:
  relay spool list [--dir DIR]
  relay spool show ID [--dir DIR] [--unmasked]
  relay spool retry ID...|--all [--dir DIR]
  relay spool drop ID... [--dir DIR]

The spool (RELAY_SPOOL_DIR, or --dir) sets aside a webhook it cannot move
into the database, one whose record does not decode or that the database
refuses for what it holds, and keeps draining the others. retry stores a
set-aside webhook in the database with its job, as the drain would (once the
cause is fixed; it needs DATABASE_URL); drop deletes it for good: it was
acknowledged to Polar, which will not send it again. These work while relay
serve runs.
`

func spoolCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	sub, rest, err := subcommand(args, spoolUsage, stdout)
	if sub == "" {
		return err
	}
	fs := subFlags("spool "+sub, spoolUsage, stdout)
	dir := fs.String("dir", env(getenv).str("RELAY_SPOOL_DIR", ""), "the spool's directory (default: RELAY_SPOOL_DIR)")
	var unmasked, all bool
	switch sub {
	case "list", "drop":
	case "retry":
		fs.BoolVar(&all, "all", false, "retry every set-aside webhook")
	case "show":
		fs.BoolVar(&unmasked, "unmasked", false, "show customer data (names, e-mails, addresses) in the payload")
	default:
		fmt.Fprint(stdout, spoolUsage)
		return fmt.Errorf("unknown spool subcommand %q", sub)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	switch {
	case *dir == "":
		return errors.New("no spool directory: set RELAY_SPOOL_DIR or pass --dir")
	case sub == "list" && len(pos) > 0:
		return fmt.Errorf("spool list takes no arguments, got %q", pos)
	case sub == "show" && len(pos) != 1:
		fs.Usage()
		return errors.New("spool show needs exactly one ID")
	case all && len(pos) > 0:
		return errors.New("spool retry takes ids or --all, not both")
	case (sub == "retry" && !all || sub == "drop") && len(pos) == 0:
		fs.Usage()
		return fmt.Errorf("spool %s needs ids (relay spool list shows them)", sub)
	}

	switch sub {
	case "list":
		list, err := spool.SetAside(*dir)
		if err != nil {
			return err
		}
		if len(list) == 0 {
			fmt.Fprintf(stdout, "nothing set aside in %s\n", spool.AsideDir(*dir))
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tWEBHOOK_ID\tTYPE\tSPOOLED\tSET_ASIDE\tREASON")
		for _, a := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, orDash(a.WebhookID), orDash(a.EventType),
				timeOrDash(a.SpooledAt), a.SetAsideAt.UTC().Format(time.RFC3339), oneLine(a.Reason, 120))
		}
		return tw.Flush()
	case "show":
		a, err := spool.ReadAside(*dir, pos[0])
		if err != nil {
			return err
		}
		printAside(stdout, a, unmasked)
		return nil
	case "drop":
		return eachID(pos, func(id string) error {
			err := spool.DropAside(*dir, id)
			if err == nil {
				fmt.Fprintf(stdout, "dropped %s\n", id)
			}
			return err
		})
	}

	// retry: each event decoded as the drain would, then committed.
	if all {
		list, err := spool.SetAside(*dir)
		if err != nil {
			return err
		}
		for _, a := range list {
			pos = append(pos, a.ID)
		}
	}
	ops, closeOps, err := openOps(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeOps()
	return eachID(pos, func(id string) error {
		a, err := spool.ReadAside(*dir, id)
		if err != nil {
			return err
		}
		ev, err := a.Event()
		if err != nil {
			return fmt.Errorf("retry %s: this relay cannot read it either (drop it, or retry with a relay that reads it): %w", id, err)
		}
		if err := receiver.Commit(ctx, ops.Pool, ops.Client, []*inbox.Event{ev}); err != nil {
			return fmt.Errorf("retry %s: %w", id, err)
		}
		if err := spool.DropAside(*dir, id); err != nil {
			return fmt.Errorf("retry %s: stored, but not removed from the set-aside webhooks (a retry again is a duplicate, dropped): %w", id, err)
		}
		fmt.Fprintf(stdout, "stored %s (webhook %s) in the inbox\n", id, ev.WebhookID)
		return nil
	})
}

func printAside(w io.Writer, a *spool.Aside, unmasked bool) {
	fmt.Fprintf(w, "id:           %s\n", a.ID)
	fmt.Fprintf(w, "webhook_id:   %s\n", orDash(a.WebhookID))
	fmt.Fprintf(w, "event_type:   %s\n", orDash(a.EventType))
	fmt.Fprintf(w, "spooled_at:   %s\n", timeOrDash(a.SpooledAt))
	fmt.Fprintf(w, "set_aside_at: %s\n", a.SetAsideAt.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(w, "reason:       %s\n", a.Reason)
	fmt.Fprintf(w, "record:       %q\n", a.Record)
	if unmasked {
		fmt.Fprintf(w, "payload (UNMASKED, %d bytes):\n%s\n", len(a.Body), a.Body)
		return
	}
	fmt.Fprintf(w, "payload (customer data masked; --unmasked shows it; %d bytes):\n", len(a.Body))
	masked, err := admin.MaskPII(a.Body)
	if err != nil {
		fmt.Fprintf(w, "  (%v)\n", err)
		return
	}
	fmt.Fprintln(w, string(masked))
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
