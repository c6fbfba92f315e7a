package reconcile

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/polarapi"
)

// Metrics are reconciliation's Prometheus collectors. Labels are bounded:
// environments, results, kinds, endpoint names, status classes, states;
// never a workspace.
type Metrics struct {
	passes    *prometheus.CounterVec
	findings  *prometheus.CounterVec
	recovers  *prometheus.CounterVec
	requests  *prometheus.CounterVec
	conns     *prometheus.GaugeVec
	oldest    prometheus.Gauge
	mu        sync.Mutex
	succeeded map[string]time.Time // connection id: its last successful pass in this process
}

var environments = []string{polarapi.Production, polarapi.Sandbox}

// States a connection can be in, for relay_polar_connections.
var states = []string{connections.StateEnabled, connections.StateDisabled, connections.StateMissing,
	connections.StateUnknown, connections.StateUnauthorized}

// NewMetrics registers reconciliation's collectors with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_reconcile_passes_total",
			Help: "Reconciliation passes, one per connection, by environment and result (ok, failed, unauthorized, forbidden).",
		}, []string{"environment", "result"}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_reconcile_findings_total",
			Help: "What reconciliation passes found, by environment and kind (booked, reversed, pending, mismatch, unknown_session, ...).",
		}, []string{"environment", "kind"}),
		recovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_reconcile_recovered_total",
			Help: "Sales (kind booked) and refunds (kind reversed) no webhook brought, stored by reconciliation as inbox rows of source reconciliation, by environment.",
		}, []string{"environment", "kind"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_polar_api_requests_total",
			Help: "Requests to Polar's API (every attempt), by endpoint and status class (2xx, 4xx, 429, 5xx, none).",
		}, []string{"endpoint", "status"}),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_polar_connections",
			Help: "Connections to Polar organizations by the state of relay's endpoint at Polar (enabled, disabled, missing, unknown, unauthorized), as of the last reconciliation.",
		}, []string{"state"}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_reconcile_oldest_success_timestamp_seconds",
			Help: "When the connection reconciled longest ago last passed (Unix time); set by the replica running the passes. time() minus it is the age of the oldest successful pass.",
		}),
		succeeded: make(map[string]time.Time),
	}
	for _, c := range []prometheus.Collector{m.passes, m.findings, m.recovers, m.requests, m.conns, m.oldest} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, env := range environments {
		for _, r := range []string{ResultOK, ResultFailed, ResultUnauthorized, ResultForbidden} {
			m.passes.WithLabelValues(env, r)
		}
		for _, k := range Kinds() {
			m.findings.WithLabelValues(env, k)
		}
		m.recovers.WithLabelValues(env, KindBooked)
		m.recovers.WithLabelValues(env, KindReversed)
	}
	for _, s := range states {
		m.conns.WithLabelValues(s)
	}
	for _, e := range []string{"orders", "refunds", "webhook_endpoints", "webhook_endpoint_create", "webhook_endpoint_update"} {
		for _, c := range []string{"2xx", "4xx", "429", "5xx", "none"} {
			m.requests.WithLabelValues(e, c)
		}
	}
	return m, nil
}

// Observe is polarapi.Config.Observe: every attempt at Polar's API.
func (m *Metrics) Observe(endpoint string, status int) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(endpoint, statusClass(status)).Inc()
}

func statusClass(status int) string {
	switch {
	case status == 0:
		return "none"
	case status == 429:
		return "429"
	case status >= 100 && status < 600:
		return strconv.Itoa(status/100) + "xx"
	}
	return "other"
}

func (m *Metrics) observeFinding(f Finding) {
	if m == nil {
		return
	}
	m.findings.WithLabelValues(f.Environment, f.Kind).Inc()
}

func (m *Metrics) recovered(env, kind string) {
	if m == nil {
		return
	}
	m.recovers.WithLabelValues(env, kind).Inc()
}

func (m *Metrics) observePass(rep Report, now time.Time) {
	if m == nil {
		return
	}
	m.passes.WithLabelValues(rep.Environment, rep.Result).Inc()
}

// observeConnections sets relay_polar_connections and the oldest
// successful pass from the connections as recorded.
func (m *Metrics) observeConnections(ctx context.Context, store *connections.Store) {
	list, err := store.List(ctx, "")
	if err != nil {
		return
	}
	counts := make(map[string]float64)
	var oldest time.Time
	for _, c := range list {
		counts[c.State]++
		at := c.CreatedAt // never reconciled successfully since it was made
		if c.LastReconcile != nil && c.LastReconcile.Result == ResultOK {
			at = c.LastReconcile.At
		}
		m.mu.Lock()
		if t, ok := m.succeeded[c.ID]; ok && t.After(at) {
			at = t
		}
		m.succeeded[c.ID] = at
		m.mu.Unlock()
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	for _, s := range states {
		m.conns.WithLabelValues(s).Set(counts[s])
	}
	if oldest.IsZero() {
		oldest = time.Now() // no connection: nothing is stale
	}
	m.oldest.Set(float64(oldest.Unix()))
}
