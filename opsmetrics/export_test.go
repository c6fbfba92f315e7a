package opsmetrics

import "time"

// MaxAge is how long a collection is shared.
const MaxAge = maxAge

// SetClock makes c read the time from now.
func SetClock(c *Collector, now func() time.Time) { c.now = now }
