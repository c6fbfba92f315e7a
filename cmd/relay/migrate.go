package main

import (
	"context"
	"fmt"
	"io"

	"github.com/relayhq/relay/migrations"
)

func migrate(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := subFlags("migrate", "usage: relay migrate\n", stdout)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("migrate takes no arguments, got %q", fs.Args())
	}
	cfg, err := parseConfig(getenv, false)
	if err != nil {
		return err
	}
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "migrations applied")
	return nil
}
