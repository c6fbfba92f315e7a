package jobs

import "context"

// HoldTurns takes every batch turn of b, as batches that run long would,
// until release is called.
func (b *BatchWorker) HoldTurns() (release func()) {
	n := b.turns.Max()
	for range n {
		if err := b.turns.Acquire(context.Background()); err != nil {
			panic(err)
		}
	}
	return func() {
		for range n {
			b.turns.Release()
		}
	}
}

// PendingPassLock is the advisory lock a pending-bookings pass holds.
const PendingPassLock = pendingPassLock
