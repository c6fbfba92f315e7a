package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
)

const endpointsUsage = `usage:
  relay endpoints add --workspace WS --environment production|sandbox   (the secret is read from stdin)
  relay endpoints list [--workspace WS]
  relay endpoints remove ID...
  relay endpoints rekey   (re-encrypts the endpoint secrets and the Polar connection tokens)

Secrets are encrypted with RELAY_SECRETS_KEY (or RELAY_SECRETS_KEY_FILE): base64 of
32 random bytes, several comma-separated while rotating; the first encrypts.
`

// maxSecretInput bounds what add reads from stdin.
const maxSecretInput = 4096

// endpointsCmd administers workspace endpoint secrets. The secret comes from
// stdin so that it is never in argv (ps, shell history).
func endpointsCmd(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	sub, rest, err := subcommand(args, endpointsUsage, stdout)
	if sub == "" {
		return err
	}
	fs := subFlags("endpoints "+sub, endpointsUsage, stdout)
	var workspace, environment string
	switch sub {
	case "add":
		fs.StringVar(&workspace, "workspace", "", "the workspace's id (UUID)")
		fs.StringVar(&environment, "environment", "", "production or sandbox: the Polar environment the secret is from")
	case "list":
		fs.StringVar(&workspace, "workspace", "", "only this workspace's secrets")
	case "remove", "rekey":
	default:
		fmt.Fprint(stdout, endpointsUsage)
		return fmt.Errorf("unknown endpoints subcommand %q", sub)
	}
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	switch {
	case sub == "add" && len(pos) > 0: // perhaps the secret: not echoed
		return errors.New("endpoints add takes no arguments: the secret is read from stdin, never from the command line")
	case sub != "remove" && len(pos) > 0:
		return fmt.Errorf("endpoints %s takes no arguments, got %q", sub, pos)
	case sub == "add" && (workspace == "" || environment == ""):
		fs.Usage()
		return errors.New("endpoints add needs --workspace and --environment")
	case sub == "remove" && len(pos) == 0:
		fs.Usage()
		return errors.New("endpoints remove needs endpoint secret ids")
	}
	var secret string
	if sub == "add" {
		if secret, err = readSecret(stdin); err != nil {
			return err
		}
	}

	store, keys, closeStore, err := openEndpoints(ctx, getenv)
	if err != nil {
		return err
	}
	defer closeStore()

	switch sub {
	case "add":
		sec, err := store.Add(ctx, workspace, environment, secret)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added endpoint secret %s (workspace %s, %s, last4 %s)\n", sec.ID, sec.Workspace, sec.Environment, sec.Last4)
		return nil
	case "list":
		list, err := store.List(ctx, workspace)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tWORKSPACE\tENVIRONMENT\tLAST4\tCREATED")
		for _, s := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.ID, s.Workspace, s.Environment, s.Last4, s.CreatedAt.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	case "remove":
		removed, err := store.Remove(ctx, pos...)
		for _, s := range removed {
			fmt.Fprintf(stdout, "removed endpoint secret %s (workspace %s, %s, last4 %s)\n", s.ID, s.Workspace, s.Environment, s.Last4)
		}
		return err
	default: // rekey: endpoint secrets and Polar tokens, under one keyring
		n, err := store.Rekey(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "re-encrypted %d endpoint secret(s) with the first key of %s (key id %s)\n", n, keys.Source(), keys.PrimaryID())
		n, err = connections.NewStore(store.Pool(), keys).Rekey(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "re-encrypted %d Polar connection token(s) with the first key of %s (key id %s)\n", n, keys.Source(), keys.PrimaryID())
		return nil
	}
}

// readSecret reads one secret from stdin; the newline that ends it, as
// echo or a terminal adds, is not part of it.
func readSecret(stdin io.Reader) (string, error) {
	b, err := readStdin(stdin, "secret")
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", errors.New("no secret on stdin: pipe it in, e.g. `relay endpoints add ... < secret.txt`")
	}
	return s, nil
}

// readStdin reads what stdin holds, at most maxSecretInput bytes; what
// names it in errors.
func readStdin(stdin io.Reader, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(stdin, maxSecretInput+1))
	if err != nil {
		return nil, fmt.Errorf("read the %s from stdin: %w", what, err)
	}
	if len(b) > maxSecretInput {
		return nil, fmt.Errorf("the %s on stdin is over %d bytes", what, maxSecretInput)
	}
	return b, nil
}

// openEndpoints reads the keys first, so that a malformed key fails
// before any connection is made.
func openEndpoints(ctx context.Context, getenv func(string) string) (*endpoints.Store, *endpoints.Keyring, func(), error) {
	keys, err := endpoints.ParseKeyring(getenv)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("configuration: %w", err)
	}
	cfg, err := parseConfig(getenv, false)
	if err != nil {
		return nil, nil, nil, err
	}
	cfg.Workers = 1 // sizes the pool: a command needs a couple of connections
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	return endpoints.NewStore(pool, keys), keys, pool.Close, nil
}
