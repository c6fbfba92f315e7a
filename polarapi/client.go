// Package polarapi is a small typed client for the few endpoints of Polar's
// API relay uses: orders, refunds and products to reconcile, webhook
// endpoints to keep relay's own healthy. One Client holds one
// organization's token in one environment and is a good citizen of
// Polar's API on its own: at most RPM requests a minute, 429s wait their
// Retry-After, 5xx and timeouts back off a bounded number of times. Clients
// share nothing, so one organization's slow or failing API never delays
// another's.
package polarapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Environments, as relay names them everywhere.
const (
	Production = "production"
	Sandbox    = "sandbox"
)

// Defaults.
const (
	DefaultProductionURL = "https://api.polar.sh"
	DefaultSandboxURL    = "https://sandbox-api.polar.sh"
	// DefaultRPM is well under Polar's limits (500 a minute per
	// organization in production, 100 in sandbox): relay is not the only
	// user of an organization's budget.
	DefaultRPM = 60
	// PageLimit is the most items Polar answers a list with.
	PageLimit = 100
)

// Config is what every client of one relay shares: where each environment
// is, the request budget, and the plumbing tests replace.
type Config struct {
	ProductionURL string // DefaultProductionURL when ""
	SandboxURL    string // DefaultSandboxURL when ""
	RPM           int    // DefaultRPM when 0

	HTTPClient     *http.Client  // http.DefaultClient's transport with RequestTimeout when nil
	RequestTimeout time.Duration // per attempt; 30 s when 0
	MaxAttempts    int           // per request, 429s and 5xx together; 5 when 0
	Clock          Clock         // real time when nil

	// Observe, when set, is told of every attempt: the endpoint's name
	// (orders, refunds, products, webhook_endpoints, ...) and its status,
	// 0 when no answer came. For metrics; it must not block.
	Observe func(endpoint string, status int)
}

// Clock is time as the client sees it; tests make it controllable.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx is done, whichever is first.
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// BaseURL is the API an environment's tokens are sent to.
func (c Config) BaseURL(environment string) (string, error) {
	switch environment {
	case Production:
		return cmpOr(c.ProductionURL, DefaultProductionURL), nil
	case Sandbox:
		return cmpOr(c.SandboxURL, DefaultSandboxURL), nil
	}
	return "", fmt.Errorf("polar environment %q: want %s or %s", environment, Production, Sandbox)
}

func cmpOr(a, b string) string {
	if a != "" {
		return strings.TrimSuffix(a, "/")
	}
	return b
}

// Client calls Polar's API with one organization's token in one
// environment. It is safe for concurrent use; its budget is shared by its
// callers.
type Client struct {
	base        string
	environment string
	token       string
	http        *http.Client
	clock       Clock
	limiter     *limiter
	timeout     time.Duration
	attempts    int
	observe     func(string, int)
}

// New returns a client for a token of environment. The base URL comes from
// the environment, never from the caller: a sandbox token can only ever be
// sent to the sandbox API and a production token to production's.
func New(cfg Config, environment, token string) (*Client, error) {
	base, err := cfg.BaseURL(environment)
	if err != nil {
		return nil, err
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("polar %s API URL %q is not an http(s) URL", environment, base)
	}
	if strings.TrimSpace(token) == "" || strings.ContainsAny(token, " \t\r\n") {
		return nil, errors.New("polar token is empty or contains whitespace")
	}
	rpm := cfg.RPM
	if rpm == 0 {
		rpm = DefaultRPM
	}
	if rpm < 0 {
		return nil, fmt.Errorf("polar API RPM %d must be positive", rpm)
	}
	c := &Client{
		base: base, environment: environment, token: token,
		http: cfg.HTTPClient, clock: cfg.Clock, timeout: cfg.RequestTimeout,
		attempts: cfg.MaxAttempts, observe: cfg.Observe,
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.clock == nil {
		c.clock = realClock{}
	}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.attempts <= 0 {
		c.attempts = 5
	}
	c.limiter = newLimiter(rpm, time.Minute, c.clock)
	return c, nil
}

// Environment is the environment the client's token belongs to.
func (c *Client) Environment() string { return c.environment }

// Errors. A 403 is a *ForbiddenError, which matches ErrForbidden.
var (
	ErrUnauthorized = errors.New("polar rejected the token (401): revoked, expired, or from the other environment")
	ErrForbidden    = errors.New("polar refused the request (403)")
	ErrRateLimited  = errors.New("polar's rate limit (429) held after every retry")
)

// ForbiddenError names what the token may not do.
type ForbiddenError struct {
	Endpoint string // e.g. webhook_endpoints
	Scope    string // the scope the endpoint needs, e.g. webhooks:write
}

func (e *ForbiddenError) Error() string {
	return fmt.Sprintf("polar refused %s (403): the token lacks the %s scope", e.Endpoint, e.Scope)
}

func (e *ForbiddenError) Is(target error) bool { return target == ErrForbidden }

// StatusError is any other answer that is not a success.
type StatusError struct {
	Endpoint string
	Status   int
	Detail   string // Polar's error detail, clipped
}

func (e *StatusError) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("polar %s: HTTP %d: %s", e.Endpoint, e.Status, e.Detail)
	}
	return fmt.Sprintf("polar %s: HTTP %d", e.Endpoint, e.Status)
}

// call is one API request: name is the endpoint's name in errors and
// metrics, scope what a 403 means is missing. idempotent requests are
// retried after 5xx and timeouts; others only after 429s (not processed).
type call struct {
	name       string
	scope      string
	method     string
	path       string
	query      url.Values
	body       any
	idempotent bool
}

// maxBody bounds what is read of one answer: a page of 100 orders is some
// 300 kB.
const maxBody = 16 << 20

func (c *Client) do(ctx context.Context, cl call, out any) error {
	var body []byte
	if cl.body != nil {
		var err error
		if body, err = json.Marshal(cl.body); err != nil {
			return fmt.Errorf("polar %s: encode request: %w", cl.name, err)
		}
	}
	u := c.base + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		if err := c.limiter.wait(ctx); err != nil {
			return fmt.Errorf("polar %s: %w", cl.name, err)
		}
		status, retryAfter, err := c.attempt(ctx, cl, u, body, out)
		if c.observe != nil {
			c.observe(cl.name, status)
		}
		if err == nil {
			return nil
		}
		var wait time.Duration
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("polar %s: %w", cl.name, ctx.Err())
		case status == http.StatusTooManyRequests:
			lastErr = fmt.Errorf("polar %s: %w", cl.name, ErrRateLimited)
			wait = retryAfter
		case (status >= 500 || status == 0) && cl.idempotent:
			lastErr = err
			wait = backoff(attempt)
		default:
			return err
		}
		if attempt >= c.attempts {
			return lastErr
		}
		if err := c.clock.Sleep(ctx, wait); err != nil {
			return fmt.Errorf("polar %s: %w (after %v)", cl.name, err, lastErr)
		}
	}
}

// backoff is 1 s doubling to 30 s, with a fifth of jitter so that many
// connections failing together do not retry together.
func backoff(attempt int) time.Duration {
	d := time.Second << min(attempt-1, 5)
	d = min(d, 30*time.Second)
	return d - time.Duration(rand.Int64N(int64(d/5)))
}

// retryAfter reads a 429's Retry-After: seconds, or an HTTP date. Without
// one, a minute: Polar's limits are per minute.
func retryAfter(h string, now time.Time) time.Duration {
	if n, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && n >= 0 {
		return min(time.Duration(n)*time.Second, 10*time.Minute)
	}
	if t, err := http.ParseTime(h); err == nil {
		return min(max(t.Sub(now), 0), 10*time.Minute)
	}
	return time.Minute
}

func (c *Client) attempt(ctx context.Context, cl call, u string, body []byte, out any) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, rd)
	if err != nil {
		return 0, 0, fmt.Errorf("polar %s: %w", cl.name, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "relay")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// No answer (timeout, reset, refused): status 0, retried if
		// idempotent. The token is in a header: the error never holds it.
		return 0, 0, fmt.Errorf("polar %s: %w", cl.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return 0, 0, fmt.Errorf("polar %s: read answer: %w", cl.name, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return resp.StatusCode, 0, fmt.Errorf("polar %s: %w", cl.name, ErrUnauthorized)
	case resp.StatusCode == http.StatusForbidden:
		return resp.StatusCode, 0, &ForbiddenError{Endpoint: cl.name, Scope: cl.scope}
	case resp.StatusCode == http.StatusTooManyRequests:
		return resp.StatusCode, retryAfter(resp.Header.Get("Retry-After"), c.clock.Now()), &StatusError{Endpoint: cl.name, Status: resp.StatusCode}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return resp.StatusCode, 0, &StatusError{Endpoint: cl.name, Status: resp.StatusCode, Detail: detail(b)}
	case len(b) > maxBody:
		return resp.StatusCode, 0, fmt.Errorf("polar %s: answer over %d bytes", cl.name, maxBody)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, 0, fmt.Errorf("polar %s: decode answer: %w", cl.name, err)
		}
	}
	return resp.StatusCode, 0, nil
}

// detail is Polar's error message, clipped; never the request.
func detail(b []byte) string {
	var e struct {
		Error  string          `json:"error"`
		Detail json.RawMessage `json:"detail"`
	}
	if json.Unmarshal(b, &e) != nil {
		return ""
	}
	s := string(e.Detail)
	if uq, err := strconv.Unquote(s); err == nil {
		s = uq
	}
	s = strings.TrimSpace(e.Error + " " + s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
