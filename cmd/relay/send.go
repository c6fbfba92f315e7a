package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/relayhq/relay/polar"
)

func send(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stdout)
	target := fs.String("url", "http://127.0.0.1:8080/webhooks/polar", "webhook endpoint")
	secret := fs.String("secret", "", "webhook secret (default: the first of POLAR_WEBHOOK_SECRET)")
	id := fs.String("id", "", "webhook-id (default: a new random id; reuse one to redeliver)")
	eventType := fs.String("type", "", "replace the payload's event type")
	timeout := fs.Duration("timeout", 15*time.Second, "request timeout")
	fs.Usage = func() {
		fmt.Fprintln(stdout, "usage: relay send [--url URL] [--secret S] [--id ID] [--type T] FILE|-")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("send needs exactly one FILE (or - for standard input)")
	}
	if *secret == "" {
		*secret, _, _ = strings.Cut(getenv("POLAR_WEBHOOK_SECRET"), ",")
		*secret = strings.TrimSpace(*secret)
	}
	if *secret == "" {
		return errors.New("send needs --secret or POLAR_WEBHOOK_SECRET")
	}

	body, err := readPayload(fs.Arg(0))
	if err != nil {
		return err
	}
	if *eventType != "" {
		if body, err = withType(body, *eventType); err != nil {
			return err
		}
	}
	if *id == "" {
		*id = newWebhookID()
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	for k, v := range polar.SignedHeaders(*secret, *id, time.Now(), body) {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("post webhook: %w", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(stdout, "%s webhook-id=%s %s\n", resp.Status, *id, strings.TrimSpace(string(answer)))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("server answered %s", resp.Status)
	}
	return nil
}

func readPayload(name string) ([]byte, error) {
	var (
		b   []byte
		err error
	)
	if name == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("read payload: %w", err)
	}
	return b, nil
}

// withType returns body with its envelope's type replaced.
func withType(body []byte, eventType string) ([]byte, error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("--type needs a JSON object payload: %w", err)
	}
	t, _ := json.Marshal(eventType)
	env["type"] = t
	return json.Marshal(env)
}

func newWebhookID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "msg_" + hex.EncodeToString(b)
}
