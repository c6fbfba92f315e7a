package jobs

// HoldTurns takes every batch turn of b, as batches that run long would,
// until release is called.
func (b *BatchWorker) HoldTurns() (release func()) {
	for range cap(b.turns) {
		b.turns <- struct{}{}
	}
	return func() {
		for range cap(b.turns) {
			<-b.turns
		}
	}
}

// PendingPassLock is the advisory lock a pending-bookings pass holds.
const PendingPassLock = pendingPassLock
