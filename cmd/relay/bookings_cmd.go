package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/ledger"
)

const bookingsUsage = `usage:
  relay bookings pending [--workspace WS] [--reason no_wallet|wallet_workspace|currency] [--limit N]
  relay bookings post [--workspace WS]

A paid sale that cannot be booked (no usable default wallet, another currency)
is pending; relay serve posts it by itself within a minute of the cause being
fixed. post tries now and says what it booked and what is still pending, and why.
`

func bookingsCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	sub, rest, err := subcommand(args, bookingsUsage, stdout)
	if sub == "" {
		return err
	}
	fs := subFlags("bookings "+sub, bookingsUsage, stdout)
	var (
		workspace, reason string
		limit             int
	)
	switch sub {
	case "pending":
		fs.StringVar(&workspace, "workspace", "", "only this workspace's (UUID)")
		fs.StringVar(&reason, "reason", "", "only those pending for this reason: "+strings.Join(ledger.Reasons(), ", "))
		fs.IntVar(&limit, "limit", 50, "at most this many, oldest first")
	case "post":
		fs.StringVar(&workspace, "workspace", "", "only this workspace's (UUID)")
	default:
		fmt.Fprint(stdout, bookingsUsage)
		return fmt.Errorf("unknown bookings subcommand %q", sub)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("bookings %s takes no arguments, got %q", sub, pos)
	}

	ops, closeOps, err := openOps(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeOps()

	if sub == "pending" {
		list, err := ops.ListPending(ctx, ledger.PendingFilter{WorkspaceID: workspace, Reason: reason, Limit: limit})
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tWORKSPACE\tAMOUNT\tREFUNDED\tREASON\tATTEMPTS\tPENDING_SINCE\tLAST_ATTEMPT\tNEXT_ATTEMPT\tNOTE")
		for _, b := range list.Pending {
			fmt.Fprintf(tw, "%s\t%s\t%d %s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n", b.SessionID, b.WorkspaceID, b.Amount, b.Currency,
				b.RefundedAmount, b.Reason, b.Attempts, b.FirstAttemptAt.UTC().Format(time.RFC3339),
				b.LastAttemptAt.UTC().Format(time.RFC3339), b.NextAttemptAt.UTC().Format(time.RFC3339), oneLine(b.Note, 100))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if list.Total > len(list.Pending) {
			fmt.Fprintf(stdout, "(%d of %d shown; --limit shows more)\n", len(list.Pending), list.Total)
		}
		return nil
	}

	report, err := ops.PostPending(ctx, workspace)
	printPostReport(stdout, report)
	return err
}

func printPostReport(w io.Writer, r admin.PostReport) {
	for _, p := range r.Posted {
		switch {
		case p.Result == ledger.PostedPending && p.Reversed > 0:
			fmt.Fprintf(w, "booked session %s: %d %s into wallet %s as transaction %s, %d reversed for refunds\n",
				p.SessionID, p.Amount, p.Currency, p.WalletID, *p.TransactionID, p.Reversed)
		case p.Result == ledger.PostedPending:
			fmt.Fprintf(w, "booked session %s: %d %s into wallet %s as transaction %s\n",
				p.SessionID, p.Amount, p.Currency, p.WalletID, *p.TransactionID)
		default:
			fmt.Fprintf(w, "closed session %s: booked before as transaction %s, nothing booked now\n", p.SessionID, *p.TransactionID)
		}
	}
	for _, p := range r.Pending {
		fmt.Fprintf(w, "still pending session %s (%d %s, workspace %s): %s: %s\n",
			p.SessionID, p.Amount, p.Currency, p.WorkspaceID, p.Reason, p.Note)
	}
	fmt.Fprintf(w, "posted %d, still pending %d\n", len(r.Posted), len(r.Pending))
}
