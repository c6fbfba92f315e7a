package receiver

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/polar"
)

// Outcomes of a request, as metric labels and log values.
const (
	OutcomeAccepted         = "accepted"  // stored, job enqueued
	OutcomeIgnored          = "ignored"   // stored, type not acted on
	OutcomeInvalid          = "invalid"   // stored, not a readable event
	OutcomeDuplicate        = "duplicate" // webhook-id seen before, nothing stored
	OutcomeSpooled          = "spooled"   // the database could not take it: on the local spool's disk
	OutcomeUnauthorized     = "unauthorized"
	OutcomeForbidden        = "forbidden"
	OutcomeTooLarge         = "too_large"
	OutcomeBadRequest       = "bad_request"
	OutcomeMethodNotAllowed = "method_not_allowed"
	OutcomeNotFound         = "not_found"   // a workspace endpoint whose id is not a UUID
	OutcomeUnavailable      = "unavailable" // store failed or too slow: 503
	OutcomeOverloaded       = "overloaded"  // unverified requests hold the memory budget: 503
	OutcomeClientGone       = "client_gone" // the client hung up before its webhook was stored: nothing answered
)

// Event type labels besides Polar's own type names.
const (
	labelUnverified = "unverified"
	labelOther      = "other"
)

// Metrics are the receiver's Prometheus collectors.
type Metrics struct {
	received           *prometheus.CounterVec
	ackDuration        *prometheus.HistogramVec
	unverifiedRequests prometheus.Gauge
	unverifiedBytes    prometheus.Gauge
}

// NewMetrics registers the receiver's collectors with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_webhooks_received_total",
			Help: "Webhook requests by event type (unverified when the signature failed) and outcome.",
		}, []string{"event_type", "outcome"}),
		ackDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_webhook_ack_duration_seconds",
			Help:    "Time from request start to the answer, by outcome.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"outcome"}),
		unverifiedRequests: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_webhook_unverified_requests",
			Help: "Webhook requests reading their body or being verified.",
		}),
		unverifiedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_webhook_unverified_bytes",
			Help: "Memory budget (RELAY_MAX_UNVERIFIED_BYTES) taken by webhook requests not verified yet.",
		}),
	}
	for _, c := range []prometheus.Collector{m.received, m.ackDuration, m.unverifiedRequests, m.unverifiedBytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Pre-declare the series dashboards and alerts read, so that a rate is
	// zero rather than absent before the first request of its kind.
	for _, outcome := range []string{OutcomeAccepted, OutcomeIgnored, OutcomeInvalid, OutcomeDuplicate, OutcomeSpooled, OutcomeUnavailable} {
		m.ackDuration.WithLabelValues(outcome)
	}
	m.received.WithLabelValues(labelUnverified, OutcomeUnauthorized)
	m.received.WithLabelValues(labelUnverified, OutcomeOverloaded)
	m.received.WithLabelValues(labelOther, OutcomeUnavailable)
	for _, t := range polar.EventTypes() {
		if polar.Handled(t) {
			m.received.WithLabelValues(t, OutcomeAccepted)
		}
	}
	return m, nil
}
