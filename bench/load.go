package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/polar"
)

// template is the order event with holes for the ids that make each event
// distinct; filling it is a few appends, so the generator stays cheap.
type template struct {
	parts []string // literal, hole, literal, hole, ..., literal
}

const (
	holeOrder    = "@@ORDER@@"
	holeCheckout = "@@CHECKOUT@@"
	holeSession  = "@@SESSION@@"
	holeWS       = "@@WS@@"
)

// loadTemplate turns a Polar order fixture into compact JSON, as Polar sends
// it, with holes for the order, checkout, session and workspace ids.
func loadTemplate(path string) (*template, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var env map[string]any
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	data, ok := env["data"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: no data object", path)
	}
	md, ok := data["metadata"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: no metadata", path)
	}
	data["id"], data["checkout_id"] = holeOrder, holeCheckout
	md["checkoutId"], md["wsId"] = holeSession, holeWS
	b, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	t := &template{}
	rest := string(b)
	for {
		at, hole := -1, ""
		for _, h := range []string{holeOrder, holeCheckout, holeSession, holeWS} {
			if i := strings.Index(rest, h); i >= 0 && (at < 0 || i < at) {
				at, hole = i, h
			}
		}
		if at < 0 {
			t.parts = append(t.parts, rest)
			return t, nil
		}
		t.parts = append(t.parts, rest[:at], hole)
		rest = rest[at+len(hole):]
	}
}

func (t *template) fill(order, checkout, sessionID, ws string) []byte {
	var b bytes.Buffer
	b.Grow(3200)
	for i, p := range t.parts {
		if i%2 == 0 {
			b.WriteString(p)
			continue
		}
		switch p {
		case holeOrder:
			b.WriteString(order)
		case holeCheckout:
			b.WriteString(checkout)
		case holeSession:
			b.WriteString(sessionID)
		case holeWS:
			b.WriteString(ws)
		}
	}
	return b.Bytes()
}

func (t *template) sample() []byte {
	return t.fill(fakeUUID(1, 1), "chk_bench_1", fakeUUID(2, 1), fakeUUID(3, 1))
}

func (t *template) size() int { return len(t.sample()) }

// fakeUUID is a well-formed, distinct UUID for (kind, n).
func fakeUUID(kind, n int64) string {
	return fmt.Sprintf("%08x-%04x-4000-8000-%012x", uint32(time.Now().Unix()), kind, n)
}

// generator sends signed, distinct order events to relay.
type generator struct {
	tmpl     *template
	client   *http.Client
	url      string
	sessions []session // when set, event i pays sessions[i]
	tenants  []tenant  // when set, event i goes to tenants[i]'s endpoint, signed with its secret
	run      string
}

// tenant is a workspace with its own endpoint and secret.
type tenant struct{ ws, secret string }

func newGenerator(t *template) *generator {
	return &generator{tmpl: t, run: fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffffff)}
}

// reset points the generator at a (new) relay with fresh connections.
func (g *generator) reset(url string) {
	if g.client != nil {
		g.client.CloseIdleConnections()
	}
	g.url = url
	g.client = &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        4096,
			MaxIdleConnsPerHost: 4096,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		},
	}
}

var phaseSeq atomic.Int64

func (g *generator) event(phase int64, i int64) (string, []byte) {
	id := fmt.Sprintf("msg_%s_%d_%d", g.run, phase, i)
	order := fakeUUID(100+phase, i)
	if g.sessions != nil {
		s := g.sessions[int(i)%len(g.sessions)]
		return id, g.tmpl.fill(order, s.checkout, s.id, s.ws)
	}
	return id, g.tmpl.fill(order, fmt.Sprintf("chk_%s_%d_%d", g.run, phase, i), fakeUUID(200+phase, i), fakeUUID(300+phase, i%97))
}

// delivery is one signed event, ready to send.
type delivery struct {
	url    string // empty: the generator's
	body   []byte
	header http.Header
}

func (g *generator) delivery(phase, i int64) delivery {
	id, body := g.event(phase, i)
	secret, url := benchSecret, ""
	if g.tenants != nil {
		t := g.tenants[int(i)%len(g.tenants)]
		secret, url = t.secret, g.url+"/"+t.ws
	}
	h := polar.SignedHeaders(secret, id, time.Now(), body)
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "relay-bench")
	return delivery{url: url, body: body, header: h}
}

// outcome of one delivery.
type outcome struct {
	status int // 0: transport error
	lat    time.Duration
	err    string
}

func (g *generator) post(ctx context.Context, d delivery) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cmp.Or(d.url, g.url), bytes.NewReader(d.body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header = d.header
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck
	resp.Body.Close()
	return resp.StatusCode, ""
}

// loadResult sums up a run.
type loadResult struct {
	ok, non200, transport int
	statuses              map[int]int
	firstErr              string
	lat                   []time.Duration // of 200s
	elapsed               time.Duration   // first send to last answer
	offered               int
}

func collect(outs [][]outcome, elapsed time.Duration) *loadResult {
	r := &loadResult{statuses: map[int]int{}, elapsed: elapsed}
	for _, list := range outs {
		for _, o := range list {
			r.offered++
			switch {
			case o.status == http.StatusOK:
				r.ok++
				r.lat = append(r.lat, o.lat)
			case o.status == 0:
				r.transport++
				if r.firstErr == "" {
					r.firstErr = o.err
				}
			default:
				r.non200++
				r.statuses[o.status]++
			}
		}
	}
	sort.Slice(r.lat, func(i, j int) bool { return r.lat[i] < r.lat[j] })
	return r
}

func (r *loadResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func (r *loadResult) errors() int { return r.non200 + r.transport }

func (r *loadResult) errorDetail() string {
	var parts []string
	for code, n := range r.statuses {
		parts = append(parts, fmt.Sprintf("%d×%d", n, code))
	}
	sort.Strings(parts)
	if r.transport > 0 {
		parts = append(parts, fmt.Sprintf("%d transport (%s)", r.transport, text.Abbrev(r.firstErr, 80)))
	}
	return strings.Join(parts, ", ")
}

// closed runs c senders, each sending its next event as soon as the last
// one is answered, for d.
func (g *generator) closed(ctx context.Context, c int, d time.Duration, _ string) (*loadResult, error) {
	return g.closedN(ctx, c, math.MaxInt, d)
}

// closedN runs c senders, each sending its next event as soon as the last
// one is answered, until n events have been sent or d has passed, whichever
// comes first.
func (g *generator) closedN(ctx context.Context, c, n int, d time.Duration) (*loadResult, error) {
	phase := phaseSeq.Add(1)
	var seq atomic.Int64
	outs := make([][]outcome, c)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range c {
		wg.Go(func() {
			list := make([]outcome, 0, min(n/c+1, 4096))
			for time.Now().Before(deadline) && ctx.Err() == nil {
				i := seq.Add(1) - 1
				if i >= int64(n) {
					break
				}
				d := g.delivery(phase, i)
				t0 := time.Now()
				status, err := g.post(ctx, d)
				list = append(list, outcome{status: status, lat: time.Since(t0), err: err})
			}
			outs[w] = list
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return collect(outs, time.Since(start)), nil
}

// open sends at a constant rate for d, whatever the answers, and measures
// each latency from the moment the event was due, so a stalled server is
// not hidden by sends it delayed (no coordinated omission). The events are
// signed before the clock starts and sent by a fixed set of senders, so that
// the generator takes as little CPU from relay as it can while it measures.
func (g *generator) open(ctx context.Context, rate float64, d time.Duration, _ string) (*loadResult, error) {
	if rate <= 0 {
		return nil, fmt.Errorf("open loop: rate %.1f", rate)
	}
	phase := phaseSeq.Add(1)
	n := int(rate * d.Seconds())
	deliveries := make([]delivery, n)
	for i := range deliveries {
		deliveries[i] = g.delivery(phase, int64(i))
	}
	interval := time.Duration(float64(time.Second) / rate)
	out := make([]outcome, n)
	due := make(chan int, n)
	start := time.Now()
	var lastDone atomic.Int64
	var wg sync.WaitGroup
	for range min(n, maxOpenSenders) {
		wg.Go(func() {
			for i := range due {
				at := start.Add(time.Duration(i) * interval)
				status, err := g.post(ctx, deliveries[i])
				now := time.Now()
				out[i] = outcome{status: status, lat: now.Sub(at), err: err}
				deliveries[i] = delivery{} // let the body go
				for {
					prev := lastDone.Load()
					if int64(now.Sub(start)) <= prev || lastDone.CompareAndSwap(prev, int64(now.Sub(start))) {
						break
					}
				}
			}
		})
	}
	timer := time.NewTimer(0)
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		due <- i
	}
	close(due)
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	elapsed := max(time.Duration(lastDone.Load()), d)
	return collect([][]outcome{out}, elapsed), nil
}

// maxOpenSenders bounds the open loop's concurrent requests: far more than
// relay keeps in flight when it keeps up, and if it does not, the events
// waiting for a sender still count their wait in their latency.
const maxOpenSenders = 2048
