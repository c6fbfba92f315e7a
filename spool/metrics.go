package spool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a spool's Stats on every scrape.
type collector struct {
	s                                             *Spool
	events, size, limit, oldest, aside, appending *prometheus.Desc
}

// NewCollector returns a prometheus.Collector of s: relay_spool_events,
// relay_spool_bytes, relay_spool_max_bytes, relay_spool_oldest_age_seconds
// (0 when the spool is empty), relay_spool_set_aside_events and
// relay_spool_appends_in_flight. With s nil (no spool configured) each is 0,
// so that dashboards and alerts read 0 rather than no data. A scrape that
// cannot read the spool leaves these series out and logs why.
func NewCollector(s *Spool) prometheus.Collector {
	return &collector{
		s: s,
		events: prometheus.NewDesc("relay_spool_events",
			"Webhooks acknowledged from the local spool and not yet moved into the database.", nil, nil),
		size: prometheus.NewDesc("relay_spool_bytes",
			"Bytes of the spooled webhooks' records and bodies.", nil, nil),
		limit: prometheus.NewDesc("relay_spool_max_bytes",
			"The spool's limit on relay_spool_bytes; past it webhooks get 503 (0 without a spool).", nil, nil),
		oldest: prometheus.NewDesc("relay_spool_oldest_age_seconds",
			"How long the oldest spooled webhook has waited for the database (0 when none waits).", nil, nil),
		aside: prometheus.NewDesc("relay_spool_set_aside_events",
			"Spooled webhooks set aside because they do not decode or the database refuses them: see relay spool list.", nil, nil),
		appending: prometheus.NewDesc("relay_spool_appends_in_flight",
			"Spool appends still writing, whether or not their request still waits; at the limit webhooks get 503 at once.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.events, c.size, c.limit, c.oldest, c.aside, c.appending} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var st Stats
	var age float64
	appending := 0
	if c.s != nil {
		var err error
		if st, err = c.s.Stats(); err != nil {
			c.s.logger.Warn("metrics scrape: spool unreadable", "path", c.s.path, "error", err)
			return
		}
		if !st.Oldest.IsZero() {
			age = max(time.Since(st.Oldest).Seconds(), 0)
		}
		appending = c.s.Appending()
	}
	for _, m := range []struct {
		d *prometheus.Desc
		v float64
	}{
		{c.events, float64(st.Events)},
		{c.size, float64(st.Bytes)},
		{c.limit, float64(st.MaxBytes)},
		{c.oldest, age},
		{c.aside, float64(st.SetAside)},
		{c.appending, float64(appending)},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.GaugeValue, m.v)
	}
}
