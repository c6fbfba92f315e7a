package console

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// The live stream. Every replica polls the database for changes, whoever
// made them, so a stream on one replica sees what another did. One poller
// per process fans the changes out to its subscribers and never waits for
// one: a subscriber whose buffer is full is dropped, and its browser
// reconnects and resumes from its last event id.

// event is one server-sent event.
type event struct {
	id, name string
	data     []byte
}

// subBuffer bounds what one subscriber may fall behind, in polls.
const subBuffer = 16

type hub struct {
	mu     sync.Mutex
	subs   map[chan []event]struct{}
	closed bool
	kick   chan struct{} // a first subscriber arrived: poll now
}

func newHub() *hub {
	return &hub{subs: make(map[chan []event]struct{}), kick: make(chan struct{}, 1)}
}

// subscribe returns a channel of event batches, closed when the hub stops
// or drops the subscriber, and a function to leave.
func (h *hub) subscribe() (<-chan []event, func()) {
	ch := make(chan []event, subBuffer)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(ch)
		return ch, func() {}
	}
	h.subs[ch] = struct{}{}
	select {
	case h.kick <- struct{}{}:
	default:
	}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	}
}

func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// publish hands the batch to every subscriber without blocking; one that
// has no room is dropped. It returns how many were dropped.
func (h *hub) publish(batch []event) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	dropped := 0
	for ch := range h.subs {
		select {
		case ch <- batch:
		default:
			delete(h.subs, ch)
			close(ch)
			dropped++
		}
	}
	return dropped
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}

// Run polls for changes and streams them to subscribers until ctx ends;
// then every stream ends too. It polls only while someone subscribes.
func (c *Console) Run(ctx context.Context) {
	defer c.hub.close()
	tick := time.NewTicker(c.opts.PollInterval)
	defer tick.Stop()
	var p poller
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-c.hub.kick:
		}
		if c.hub.count() == 0 {
			p = poller{} // start afresh: subscribers catch up by their own cursor
			continue
		}
		batch, err := c.poll(ctx, &p)
		if err != nil {
			if ctx.Err() == nil {
				c.opts.Logger.Warn("console: polling for changes failed", "error", err)
			}
			continue
		}
		if len(batch) > 0 {
			if n := c.hub.publish(batch); n > 0 {
				c.opts.Logger.Info("console: dropped slow stream subscribers", "dropped", n)
			}
		}
	}
}

// poller is what the poll loop remembers between polls.
type poller struct {
	since time.Time               // ask from here next
	seen  map[string]seenDelivery // by seenKey
}

type seenDelivery struct {
	webhookID string
	sum       [32]byte
	settled   bool // nothing more will happen unless an operator acts
	at        time.Time
}

// maxChanges bounds the changes one poll reads, and the unsettled deliveries
// it reads again; under a burst beyond it the stream shows the rest as they
// settle, and a reload shows everything.
const maxChanges = 500

// poll reads what changed since the last poll, and the deliveries it saw
// unsettled before (a worker's transaction may commit long after it
// started, which is the time its rows carry), and returns an event for
// each delivery that looks different from the last time.
func (c *Console) poll(ctx context.Context, p *poller) ([]event, error) {
	if p.seen == nil {
		p.seen = make(map[string]seenDelivery)
	}
	since := p.since
	if since.IsZero() {
		since = time.Now().Add(-c.opts.Lookback)
	}
	now, err := c.store.clock(ctx)
	if err != nil {
		return nil, err
	}
	ids, _, err := c.store.changes(ctx, since, maxChanges)
	if err != nil {
		return nil, err
	}
	for _, key := range p.unsettled(maxChanges) {
		ids = append(ids, p.seen[key].webhookID)
	}
	ids = dedupe(ids)
	ds, err := c.store.byWebhookIDs(ctx, ids)
	if err != nil {
		return nil, err
	}
	// A delivery asked for and not found is gone (the retention sweep, an
	// operator): nothing more will happen to it.
	asked := make(map[string]bool, len(ids))
	for _, id := range ids {
		asked[id] = true
	}
	found := make(map[string]bool, len(ds))
	for _, d := range ds {
		found[seenKey(d)] = true
	}
	for key, s := range p.seen {
		if asked[s.webhookID] && !found[key] {
			delete(p.seen, key)
		}
	}
	cursor := cursorOf(now)
	var batch []event
	for _, d := range ds {
		data, err := json.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("encode delivery %q: %w", d.WebhookID, err)
		}
		sum := sha256.Sum256(data)
		key := seenKey(d)
		prev, ok := p.seen[key]
		p.seen[key] = seenDelivery{webhookID: d.WebhookID, sum: sum, settled: settled(d), at: now}
		if !ok || prev.sum != sum {
			batch = append(batch, event{id: cursor, name: "delivery", data: data})
		}
	}
	for id, s := range p.seen {
		if s.settled && now.Sub(s.at) > 2*c.opts.Lookback {
			delete(p.seen, id)
		}
	}
	p.since = now.Add(-c.opts.Lookback)
	// Oldest first, as they happened.
	for i, j := 0, len(batch)-1; i < j; i, j = i+1, j-1 {
		batch[i], batch[j] = batch[j], batch[i]
	}
	return batch, nil
}

// seenKey is a delivery's key in poller.seen: by endpoint too, since
// endpoints that stored one webhook id are deliveries of their own.
func seenKey(d *Delivery) string { return d.Endpoint() + " " + d.WebhookID }

// unsettled returns the keys of up to n of the deliveries seen unsettled,
// those read longest ago first: with more than n, each is read again at
// least every ceil(unsettled/n) polls, and none stops updating.
func (p *poller) unsettled(n int) []string {
	var keys []string
	for key, s := range p.seen {
		if !s.settled {
			keys = append(keys, key)
		}
	}
	slices.SortFunc(keys, func(a, b string) int { return p.seen[a].at.Compare(p.seen[b].at) })
	return keys[:min(len(keys), n)]
}

// settled reports whether a delivery will change only by an operator's hand.
func settled(d *Delivery) bool {
	if d.Status != "pending" {
		return d.Job == nil || d.Job.FinalizedAt != nil
	}
	return d.Job != nil && (d.Job.State == "discarded" || d.Job.State == "cancelled")
}

func dedupe(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// A cursor is the database's time of a poll in microseconds: the same
// clock on every replica, so a browser resumes where it was on any of them.
func cursorOf(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

func parseCursor(s string) (time.Time, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.UnixMicro(n), true
}

// maxCatchUp is how far back a reconnecting stream is caught up; a client
// gone longer gets a reset event and reloads.
const maxCatchUp = 15 * time.Minute

// stream serves GET /admin/api/stream: "delivery" events whose data is a
// Delivery as JSON, comment heartbeats, and "reset" when the client must
// reload because it missed too much.
func (c *Console) stream(w http.ResponseWriter, r *http.Request) {
	// The admin listener's write timeout is for requests that end: this one
	// lives on, each write with its own deadline (net/http already lifts
	// the read deadline once the request is read).
	rc := http.NewResponseController(w)
	ch, leave := c.hub.subscribe()
	defer leave()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	// write sends raw lines (a retry field, a comment) and events, then
	// flushes, within the write timeout: a client that does not read is
	// cut off rather than holding this goroutine.
	write := func(evs []event, raw string) error {
		if err := rc.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout)); err != nil {
			return err
		}
		if _, err := io.WriteString(w, raw); err != nil {
			return err
		}
		for _, e := range evs {
			if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", e.id, e.name, e.data); err != nil {
				return err
			}
		}
		return rc.Flush()
	}

	first, err := c.catchUp(r.Context(), r.Header.Get("Last-Event-ID"))
	if err != nil {
		c.opts.Logger.Warn("console: stream catch-up failed", "error", err)
		first = []event{{name: "reset", data: []byte(`{}`)}}
	}
	if err := write(first, "retry: 2000\n\n"); err != nil {
		return
	}
	heartbeat := time.NewTicker(c.opts.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case batch, ok := <-ch:
			if !ok {
				return // dropped as too slow, or relay is stopping: the client reconnects
			}
			if write(batch, "") != nil {
				return
			}
		case <-heartbeat.C:
			// A comment line: keeps proxies from closing an idle stream.
			if write(nil, ": heartbeat\n\n") != nil {
				return
			}
		}
	}
}

// catchUp returns the events a client that saw everything up to lastID has
// missed, ending with a "ready" event that carries the cursor to resume from.
// A client gone longer than maxCatchUp, or that missed more than
// maxChanges deliveries, gets "reset" instead: decided before reading the
// changes in the first case, and after reading at most maxChanges+1 of
// each kind in the second, whatever the tables hold.
func (c *Console) catchUp(ctx context.Context, lastID string) ([]event, error) {
	now, err := c.store.clock(ctx)
	if err != nil {
		return nil, err
	}
	cursor := cursorOf(now)
	ready := event{id: cursor, name: "ready", data: []byte(`{}`)}
	reset := event{id: cursor, name: "reset", data: []byte(`{}`)}
	since, resume := parseCursor(lastID)
	switch {
	case !resume:
		return []event{ready}, nil
	case now.Sub(since) > maxCatchUp:
		return []event{reset, ready}, nil
	}
	ids, more, err := c.store.changes(ctx, since.Add(-c.opts.Lookback), maxChanges)
	if err != nil {
		return nil, err
	}
	if more {
		return []event{reset, ready}, nil
	}
	ds, err := c.store.byWebhookIDs(ctx, ids)
	if err != nil {
		return nil, err
	}
	var out []event
	for i := len(ds) - 1; i >= 0; i-- {
		data, err := json.Marshal(ds[i])
		if err != nil {
			return nil, fmt.Errorf("encode delivery %q: %w", ds[i].WebhookID, err)
		}
		out = append(out, event{id: cursor, name: "delivery", data: data})
	}
	return append(out, ready), nil
}
