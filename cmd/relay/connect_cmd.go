package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/polarapi"
	"github.com/relayhq/relay/reconcile"
)

const connectUsage = `usage:
  relay connect --workspace WS --environment production|sandbox   (the Polar organization access token is read from stdin)

Checks the token with Polar, stores it encrypted (RELAY_SECRETS_KEY), and with
RELAY_PUBLIC_URL set and a token with webhooks:write registers (or finds and
updates) the workspace's webhook endpoint at Polar and stores its secret.
The token needs orders:read and refunds:read; webhooks:read and webhooks:write
let relay manage its endpoint.
`

const connectionsUsage = `usage:
  relay connections list [--workspace WS]
  relay disconnect --workspace WS --environment production|sandbox
`

// connectCmd connects a workspace's Polar organization. The token comes
// from stdin, never argv (ps, shell history), and a terminal does not
// echo it.
func connectCmd(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stderr, stdout io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, connectUsage)
		return nil
	}
	fs := subFlags("connect", connectUsage, stdout)
	var workspace, environment string
	fs.StringVar(&workspace, "workspace", "", "the workspace's id (UUID)")
	fs.StringVar(&environment, "environment", "", "production or sandbox: the Polar environment the token is from")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) > 0: // perhaps the token: not echoed
		return errors.New("connect takes no arguments: the token is read from stdin, never from the command line")
	case workspace == "" || environment == "":
		fs.Usage()
		return errors.New("connect needs --workspace and --environment")
	}
	var token string
	err = withoutEcho(stdin, stderr, "Polar organization access token: ", func() error {
		var err error
		token, err = readToken(stdin)
		return err
	})
	if err != nil {
		return err
	}

	conn, closeStores, err := openConnector(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeStores()
	res, err := conn.Connect(ctx, workspace, environment, token)
	if err != nil {
		return err
	}
	for _, s := range res.Steps {
		fmt.Fprintln(stdout, s)
	}
	if res.Hint != "" {
		fmt.Fprintln(stdout, "to do:", res.Hint)
	}
	return nil
}

// readToken reads one token from stdin; the newline that ends it is not
// part of it.
func readToken(stdin io.Reader) (string, error) {
	b, err := readStdin(stdin, "token")
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New("no token on stdin: pipe it in, e.g. `relay connect ... < token.txt`")
	}
	return s, nil
}

// openConnector reads the keys and the configuration first, so that a
// mistake there fails before any connection is made.
func openConnector(ctx context.Context, getenv func(string) string) (*connections.Connector, func(), error) {
	keys, err := endpoints.ParseKeyring(getenv)
	if err != nil {
		return nil, nil, fmt.Errorf("configuration: %w", err)
	}
	cfg, err := parseConfig(getenv, false)
	if err != nil {
		return nil, nil, err
	}
	cfg.Workers = 1
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return newConnector(cfg, pool, keys), pool.Close, nil
}

// connectionsCmd lists connections; disconnectCmd removes one.
func connectionsCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	sub, rest, err := subcommand(args, connectionsUsage, stdout)
	if sub == "" {
		return err
	}
	if sub != "list" {
		fmt.Fprint(stdout, connectionsUsage)
		return fmt.Errorf("unknown connections subcommand %q", sub)
	}
	fs := subFlags("connections list", connectionsUsage, stdout)
	var workspace string
	fs.StringVar(&workspace, "workspace", "", "only this workspace's connections")
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("connections list takes no arguments, got %q", pos)
	}
	store, closeStore, err := openConnections(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeStore()
	list, err := store.List(ctx, workspace)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKSPACE\tENVIRONMENT\tTOKEN\tENDPOINT\tLAST RECONCILIATION\tRESULT\tFINDINGS")
	for _, c := range list {
		at, result, findings := "never", "-", "-"
		if r := c.LastReconcile; r != nil {
			at, result, findings = r.At.UTC().Format(time.RFC3339), r.Result, fmt.Sprint(r.Findings)
			if r.Error != "" {
				result += ": " + r.Error
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t…%s\t%s\t%s\t%s\t%s\n", c.Workspace, c.Environment, c.TokenLast4, c.State, at, result, findings)
	}
	return tw.Flush()
}

func disconnectCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, connectionsUsage)
		return nil
	}
	fs := subFlags("disconnect", connectionsUsage, stdout)
	var workspace, environment string
	fs.StringVar(&workspace, "workspace", "", "the workspace's id (UUID)")
	fs.StringVar(&environment, "environment", "", "production or sandbox")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 || workspace == "" || environment == "" {
		fs.Usage()
		return errors.New("disconnect needs --workspace and --environment, and no arguments")
	}
	store, closeStore, err := openConnections(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeStore()
	c, err := store.Remove(ctx, workspace, environment)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed the %s Polar token of workspace %s (last4 %s); its webhook endpoint at Polar and its endpoint secrets stay (relay endpoints list)\n",
		c.Environment, c.Workspace, c.TokenLast4)
	return nil
}

// openConnections opens the connections' store, as openConnector does.
func openConnections(ctx context.Context, getenv func(string) string) (*connections.Store, func(), error) {
	conn, closeStores, err := openConnector(ctx, getenv)
	if err != nil {
		return nil, nil, err
	}
	return conn.Store, closeStores, nil
}

// newConnector is what relay connect and the admin API connect with.
// Once a connection is stored it asks for a reconciliation pass of it,
// which relay serve's workers run at once.
func newConnector(cfg *config, pool *pgxpool.Pool, keys *endpoints.Keyring) *connections.Connector {
	return &connections.Connector{
		Store:       connections.NewStore(pool, keys),
		Secrets:     endpoints.NewStore(pool, keys),
		API:         cfg.PolarAPI,
		Clients:     polarapi.NewClients(cfg.PolarAPI),
		PublicURL:   cfg.PublicURL,
		WebhookPath: cfg.WebhookPath,
		AfterConnect: func(ctx context.Context, c connections.Connection) (string, error) {
			client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
			if err != nil {
				return "", err
			}
			if _, err := client.Insert(ctx, reconcile.PassArgs{Workspace: c.Workspace, Environment: c.Environment}, nil); err != nil {
				return "", err
			}
			return "asked for a reconciliation pass of the connection: relay serve runs it now (relay connections list shows its result)", nil
		},
	}
}
