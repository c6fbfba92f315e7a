package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/relayhq/relay/polar"
)

const sendUsage = "usage: relay send [--url URL] [--secret S] [--id ID] [--type T] FILE|-\n"

func send(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := subFlags("send", sendUsage, stdout)
	target := fs.String("url", localWebhookURL(getenv), "webhook endpoint; the default is where relay serve listens by RELAY_HTTP_ADDR and RELAY_WEBHOOK_PATH")
	secret := fs.String("secret", "", "webhook secret (default: the first of POLAR_WEBHOOK_SECRET)")
	id := fs.String("id", "", "webhook-id (default: a new random id; reuse one to redeliver)")
	eventType := fs.String("type", "", "replace the payload's event type")
	timeout := fs.Duration("timeout", 15*time.Second, "request timeout")
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

// localWebhookURL is where relay serve, run here with the same environment,
// takes webhooks. A listener on every interface is reached on loopback.
func localWebhookURL(getenv func(string) string) string {
	e := env(getenv)
	addr, path := e.str("RELAY_HTTP_ADDR", defaultHTTPAddr), e.str("RELAY_WEBHOOK_PATH", defaultWebhookPath)
	host, port, err := net.SplitHostPort(addr)
	if err != nil { // serve refuses it too; let the request say so
		return "http://" + addr + path
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + path
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
