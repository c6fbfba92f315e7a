package spool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a spool's Stats on every scrape.
type collector struct {
	s                           *Spool
	events, size, limit, oldest *prometheus.Desc
}

// NewCollector returns a prometheus.Collector of s: relay_spool_events,
// relay_spool_bytes, relay_spool_max_bytes and relay_spool_oldest_age_seconds
// (0 when the spool is empty). A scrape that cannot read the spool leaves
// these series out and logs why.
func NewCollector(s *Spool) prometheus.Collector {
	return &collector{
		s: s,
		events: prometheus.NewDesc("relay_spool_events",
			"Webhooks acknowledged from the local spool and not yet moved into the database.", nil, nil),
		size: prometheus.NewDesc("relay_spool_bytes",
			"Bytes of the spooled webhooks' records and bodies.", nil, nil),
		limit: prometheus.NewDesc("relay_spool_max_bytes",
			"The spool's limit on relay_spool_bytes; past it webhooks get 503.", nil, nil),
		oldest: prometheus.NewDesc("relay_spool_oldest_age_seconds",
			"How long the oldest spooled webhook has waited for the database (0 when none waits).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.size
	ch <- c.limit
	ch <- c.oldest
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.s.Stats()
	if err != nil {
		c.s.logger.Warn("metrics scrape: spool unreadable", "path", c.s.path, "error", err)
		return
	}
	var age float64
	if !st.Oldest.IsZero() {
		age = max(time.Since(st.Oldest).Seconds(), 0)
	}
	for _, m := range []struct {
		d *prometheus.Desc
		v float64
	}{
		{c.events, float64(st.Events)},
		{c.size, float64(st.Bytes)},
		{c.limit, float64(st.MaxBytes)},
		{c.oldest, age},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.GaugeValue, m.v)
	}
}
