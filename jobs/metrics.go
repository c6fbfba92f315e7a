package jobs

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/products"
)

// Metrics are the workers' Prometheus collectors.
type Metrics struct {
	processed *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	lag       *prometheus.HistogramVec
	bookings  *prometheus.CounterVec
	foreign   *prometheus.CounterVec
	products  *prometheus.CounterVec
}

// NewMetrics registers the workers' collectors with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_events_processed_total",
			Help: "Events worked, by event type and result.",
		}, []string{"event_type", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_event_processing_duration_seconds",
			Help:    "Time spent working one event, by event type.",
			Buckets: prometheus.DefBuckets,
		}, []string{"event_type"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_event_lag_seconds",
			Help:    "Time from the webhook's timestamp to the end of its processing, by event type.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		}, []string{"event_type"}),
		bookings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_ledger_bookings_total",
			Help: "Ledger outcomes of paid and refunded orders, by result.",
		}, []string{"result"}),
		foreign: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_boundary_refusals_total",
			Help: "Events refused because they would change a session or product outside the workspace or environment whose secret verified them, by reason (workspace, environment).",
		}, []string{"reason"}),
		products: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_product_events_total",
			Help: "Product events (product.created, product.updated) worked to the end, by outcome: applied, unchanged (a redelivery), stale (older than the version applied), unknown (no storefront product), refused.",
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{m.processed, m.duration, m.lag, m.bookings, m.foreign, m.products} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Pre-declare the series dashboards and alerts read, so that they are
	// zero rather than absent before the first event of their kind.
	for _, t := range []string{"order.created", "order.updated", "order.paid", "order.refunded",
		"checkout.updated", "checkout.expired", "refund.updated", "product.created", "product.updated"} {
		for _, r := range []string{ResultOK, ResultNoop, ResultRetry, ResultDiscarded, ResultRefused, ResultError} {
			m.processed.WithLabelValues(t, r)
		}
		m.duration.WithLabelValues(t)
		m.lag.WithLabelValues(t)
	}
	for _, r := range []string{ledger.Booked, ledger.AlreadyBooked, ledger.NotPaid, ledger.SkippedNoWallet,
		ledger.SkippedWalletWorkspace, ledger.SkippedCurrency, ledger.PostedPending, BookingReversed} {
		m.bookings.WithLabelValues(r)
	}
	for _, o := range []string{products.Applied, products.Unchanged, products.Stale, products.Unknown, productRefused} {
		m.products.WithLabelValues(o)
	}
	m.foreign.WithLabelValues(boundaryWorkspace)
	m.foreign.WithLabelValues(boundaryEnvironment)
	return m, nil
}

// BookingReversed counts refunds booked as reversals.
const BookingReversed = "reversed"

// Reasons an event crossed the boundary of the endpoint that verified it.
const (
	boundaryWorkspace   = "workspace"
	boundaryEnvironment = "environment"
)

// countBooking counts one ledger outcome; on nil Metrics it does nothing.
func (m *Metrics) countBooking(result string) {
	if m != nil {
		m.bookings.WithLabelValues(result).Inc()
	}
}
