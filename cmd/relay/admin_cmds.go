package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/console"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/reconcile"
)

// mountAdmin adds the authenticated admin API and River UI to the admin
// listener, or, without credentials, leaves them out and says so.
func mountAdmin(ctx context.Context, mux *http.ServeMux, cfg *config, pool *pgxpool.Pool, client *river.Client[pgx.Tx], secrets *endpoints.Store, connector *connections.Connector, reconciler *reconcile.Reconciler, metrics *jobs.Metrics, logger *slog.Logger) error {
	creds := admin.Credentials{Token: cfg.AdminToken, User: cfg.AdminUser, Password: cfg.AdminPassword}
	if !creds.Configured() {
		logger.Warn("admin API and River UI are disabled: set RELAY_ADMIN_TOKEN or RELAY_ADMIN_USER and RELAY_ADMIN_PASSWORD to enable them")
		return nil
	}
	con, err := console.New(&admin.Ops{Pool: pool, Client: client}, console.Options{Logger: logger})
	if err != nil {
		return err
	}
	go con.Run(ctx) // the console's live stream; ends its streams when ctx ends
	h, err := admin.NewHandler(pool, client, admin.Options{Credentials: creds, Logger: logger, Console: con, Endpoints: secrets, Connections: connector, Reconciler: reconciler, Metrics: metrics})
	if err != nil {
		return err
	}
	if err := h.Start(ctx); err != nil {
		return err
	}
	mux.Handle("/admin/", h)
	mux.Handle(admin.UIPrefix+"/", h)
	return nil
}

const jobsUsage = `usage:
  relay jobs list [--state S[,S...]] [--kind K] [--limit N]
  relay jobs retry ID...
  relay jobs retry --state discarded [--since DURATION] [--dry-run]
  relay jobs cancel ID...
  relay jobs delete ID...
  relay jobs delete --state discarded [--since DURATION] [--dry-run]
`

const inboxUsage = `usage:
  relay inbox list [--status S] [--type T] [--limit N]
  relay inbox show WEBHOOK_ID [--endpoint E] [--unmasked]
  relay inbox replay [--endpoint E] WEBHOOK_ID...

A webhook id is unique per endpoint: "platform", or WORKSPACE_ID/production
or WORKSPACE_ID/sandbox. --endpoint names one when several have stored an id.
`

// openOps connects for an admin command. The River client is insert-only:
// it lists, retries, cancels, deletes and enqueues, and never works jobs; the
// running relay serve does that.
func openOps(ctx context.Context, getenv func(string) string) (*admin.Ops, func(), error) {
	cfg, err := parseConfig(getenv, false)
	if err != nil {
		return nil, nil, err
	}
	cfg.Workers = 1 // sizes the pool: a command needs a couple of connections
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{MaxAttempts: cfg.MaxAttempts})
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("create river client: %w", err)
	}
	return &admin.Ops{Pool: pool, Client: client}, pool.Close, nil
}

// subcommand splits "list --flag" off args, printing usage when none is given.
func subcommand(args []string, usage string, stdout io.Writer) (string, []string, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return "", nil, errors.New("no subcommand given")
		}
		return "", nil, nil
	}
	return args[0], args[1:], nil
}

// parseInterspersed parses flags that may come before or after positional
// arguments ("show msg_1 --unmasked" as well as "show --unmasked msg_1").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// subFlags returns a subcommand's flag set, printing usage to stdout. The
// flag package's own line for a bad flag is dropped: the error is returned,
// and main prints it once.
func subFlags(name, usage string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprint(stdout, usage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

func jobsCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	sub, rest, err := subcommand(args, jobsUsage, stdout)
	if sub == "" {
		return err
	}
	fs := subFlags("jobs "+sub, jobsUsage, stdout)
	var (
		state, kind string
		limit       int
		since       time.Duration
		dryRun      bool
	)
	switch sub {
	case "list":
		fs.StringVar(&state, "state", "", "only jobs in these states (comma-separated): available, running, retryable, scheduled, discarded, cancelled, completed, pending")
		fs.StringVar(&kind, "kind", "", "only jobs of this kind (polar_event, inbox_retention)")
		fs.IntVar(&limit, "limit", 50, "at most this many jobs")
	case "retry", "delete":
		fs.StringVar(&state, "state", "", sub+" every job in this state instead of listed ids")
		fs.DurationVar(&since, "since", 0, "with --state: only jobs finalized within this long, e.g. 24h")
		fs.BoolVar(&dryRun, "dry-run", false, "with --state: list what would be done")
	case "cancel":
	default:
		fmt.Fprint(stdout, jobsUsage)
		return fmt.Errorf("unknown jobs subcommand %q", sub)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	states, err := admin.ParseStates(state)
	if err != nil {
		return err
	}
	ids, err := parseIDs(pos)
	if err != nil {
		return err
	}
	switch {
	case sub == "list" && len(pos) > 0:
		return fmt.Errorf("jobs list takes no arguments, got %q", pos)
	case (sub == "retry" || sub == "delete") && (len(ids) == 0) == (len(states) == 0):
		fs.Usage()
		return fmt.Errorf("jobs %s needs job ids or --state, not both", sub)
	case (sub == "retry" || sub == "delete") && (since != 0 || dryRun) && len(states) == 0:
		return errors.New("--since and --dry-run go with --state")
	case sub == "cancel" && len(ids) == 0:
		fs.Usage()
		return errors.New("jobs cancel needs job ids")
	}

	ops, closeOps, err := openOps(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeOps()

	switch sub {
	case "list":
		var kinds []string
		if kind != "" {
			kinds = []string{kind}
		}
		list, err := ops.ListJobs(ctx, admin.JobFilter{States: states, Kinds: kinds, Limit: limit})
		if err != nil {
			return err
		}
		printJobs(stdout, list)
		return nil
	case "retry", "delete":
		bulk, one, verb, dryVerb := ops.RetryMatching, ops.RetryJob, "retried", "would retry"
		if sub == "delete" {
			bulk, one, verb, dryVerb = ops.DeleteMatching, ops.DeleteJob, "deleted", "would delete"
		}
		if len(states) > 0 {
			var after time.Time
			if since > 0 {
				after = time.Now().Add(-since)
			}
			if dryRun {
				verb = dryVerb
			}
			n, err := bulk(ctx, admin.JobFilter{States: states}, after, dryRun, func(j admin.Job) {
				fmt.Fprintf(stdout, "%s job %d (%s %s, %s)\n", verb, j.ID, j.Kind, orDash(j.WebhookID), j.State)
			})
			if err == nil || n > 0 {
				fmt.Fprintf(stdout, "%s %d job(s)\n", verb, n)
			}
			return err
		}
		return eachID(ids, func(id int64) error {
			j, err := one(ctx, id)
			if err == nil {
				fmt.Fprintf(stdout, "%s job %d (%s %s): %s\n", verb, j.ID, j.Kind, orDash(j.WebhookID), jobOutcome(sub, j.State))
			}
			return err
		})
	default: // cancel
		return eachID(ids, func(id int64) error {
			j, err := ops.CancelJob(ctx, id)
			if err == nil && j.State == "running" {
				fmt.Fprintf(stdout, "cancel requested for job %d (%s %s): it is running and stops when its worker sees the request\n", j.ID, j.Kind, orDash(j.WebhookID))
			} else if err == nil {
				fmt.Fprintf(stdout, "cancelled job %d (%s %s): now %s\n", j.ID, j.Kind, orDash(j.WebhookID), j.State)
			}
			return err
		})
	}
}

// jobOutcome says where a retried job is now, or what a deleted one was.
func jobOutcome(sub, state string) string {
	if sub == "delete" {
		return "was " + state
	}
	return "now " + state
}

func parseIDs(args []string) ([]int64, error) {
	var ids []int64
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("job id %q is not a positive integer", a)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// eachID runs do for every id and reports all failures, so one unknown id
// does not stop the rest.
func eachID[T any](ids []T, do func(T) error) error {
	var errs []error
	for _, id := range ids {
		if err := do(id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func printJobs(w io.Writer, list []admin.Job) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tSTATE\tATTEMPT\tWEBHOOK_ID\tTIME\tLAST_ERROR")
	for _, j := range list {
		at := "scheduled " + j.ScheduledAt.UTC().Format(time.RFC3339)
		if j.FinalizedAt != nil {
			at = "finalized " + j.FinalizedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", j.ID, j.Kind, j.State, j.Attempt, j.MaxAttempts,
			orDash(j.WebhookID), at, orDash(oneLine(j.LastError, 100)))
	}
	tw.Flush()
}

func inboxCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	sub, rest, err := subcommand(args, inboxUsage, stdout)
	if sub == "" {
		return err
	}
	fs := subFlags("inbox "+sub, inboxUsage, stdout)
	var (
		status, eventType, endpoint string
		limit                       int
		unmasked                    bool
	)
	switch sub {
	case "list":
		fs.StringVar(&status, "status", "", "only rows with this status: pending, processed, ignored, invalid")
		fs.StringVar(&eventType, "type", "", "only rows of this event type, e.g. order.paid")
		fs.IntVar(&limit, "limit", 50, "at most this many rows, newest first")
	case "show":
		fs.BoolVar(&unmasked, "unmasked", false, "show customer data (names, e-mails, addresses) in the payload")
		fs.StringVar(&endpoint, "endpoint", "", "the endpoint that stored it (platform, WORKSPACE_ID/production or WORKSPACE_ID/sandbox), when several did")
	case "replay":
		fs.StringVar(&endpoint, "endpoint", "", "the endpoint that stored them (platform, WORKSPACE_ID/production or WORKSPACE_ID/sandbox), when several did")
	default:
		fmt.Fprint(stdout, inboxUsage)
		return fmt.Errorf("unknown inbox subcommand %q", sub)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	switch {
	case sub == "list" && len(pos) > 0:
		return fmt.Errorf("inbox list takes no arguments, got %q", pos)
	case sub == "show" && len(pos) != 1:
		fs.Usage()
		return errors.New("inbox show needs exactly one WEBHOOK_ID")
	case sub == "replay" && len(pos) == 0:
		fs.Usage()
		return errors.New("inbox replay needs webhook ids")
	}

	ops, closeOps, err := openOps(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeOps()

	switch sub {
	case "list":
		list, err := ops.ListInbox(ctx, inbox.ListParams{Status: status, EventType: eventType, Limit: limit})
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WEBHOOK_ID\tENDPOINT\tTYPE\tSTATUS\tRECEIVED\tJOB_ID\tSOURCE\tNOTE")
		for _, e := range list {
			job := "-"
			if e.JobID != nil {
				job = strconv.FormatInt(*e.JobID, 10)
			}
			note := ""
			if e.Note != nil {
				note = *e.Note
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.WebhookID, e.Endpoint, orDash(e.EventType), e.Status,
				e.ReceivedAt.UTC().Format(time.RFC3339), job, e.Source, orDash(oneLine(note, 80)))
		}
		return tw.Flush()
	case "show":
		d, err := ops.ShowInbox(ctx, pos[0], endpoint, unmasked)
		if err != nil {
			return err
		}
		printInboxDetail(stdout, d)
		return nil
	default: // replay
		return eachID(pos, func(webhookID string) error {
			jobID, err := ops.Replay(ctx, webhookID, endpoint)
			if err == nil {
				fmt.Fprintf(stdout, "replaying %s as job %d\n", webhookID, jobID)
			}
			return err
		})
	}
}

func printInboxDetail(w io.Writer, d *admin.InboxDetail) {
	fmt.Fprintf(w, "webhook_id:   %s\n", d.WebhookID)
	fmt.Fprintf(w, "endpoint:     %s\n", d.Endpoint)
	fmt.Fprintf(w, "event_type:   %s\n", orDash(d.EventType))
	fmt.Fprintf(w, "status:       %s\n", d.Status)
	fmt.Fprintf(w, "received_at:  %s\n", d.ReceivedAt.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(w, "webhook_time: %s\n", d.WebhookTimestamp.UTC().Format(time.RFC3339Nano))
	if d.ProcessedAt != nil {
		fmt.Fprintf(w, "processed_at: %s\n", d.ProcessedAt.UTC().Format(time.RFC3339Nano))
	}
	if d.Note != nil {
		fmt.Fprintf(w, "note:         %s\n", *d.Note)
	}
	switch {
	case d.Job != nil:
		fmt.Fprintf(w, "job:          %d %s, attempt %d/%d\n", d.Job.ID, d.Job.State, d.Job.Attempt, d.Job.MaxAttempts)
		if d.Job.LastError != "" {
			fmt.Fprintf(w, "last_error:   %s\n", oneLine(d.Job.LastError, 300))
		}
	case d.JobID != nil:
		fmt.Fprintf(w, "job:          %d (no longer in river_job)\n", *d.JobID)
	}
	label := "payload (customer data masked; --unmasked shows it):"
	if !d.Masked {
		label = "payload (UNMASKED):"
	}
	fmt.Fprintln(w, label)
	if d.PayloadError != "" {
		fmt.Fprintf(w, "  (%s)\n", d.PayloadError)
		return
	}
	var v any
	if json.Unmarshal(d.Payload, &v) == nil {
		if s, isString := v.(string); isString { // a body that is not JSON
			fmt.Fprintln(w, s)
			return
		}
	}
	fmt.Fprintln(w, string(d.Payload))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	return text.Abbrev(strings.Join(strings.Fields(s), " "), n)
}
