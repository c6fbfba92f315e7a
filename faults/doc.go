// Package faults holds relay's fault suite: tests that start a real
// PostgreSQL cluster and real relay processes, inject the faults production
// sees (kill -9, a database crash, a minutes-long database outage through the
// spool, a full spool, a slow database, duplicate storms, several replicas,
// a Patroni switchover and the loss of the primary's machine) under load, and then check relay's two promises: every webhook answered 200
// is processed, and no sale is booked twice.
//
// The short form runs in `make test`; `make soak` runs it longer with more
// load (RELAY_FAULT_SCALE).
package faults
