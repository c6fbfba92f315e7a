package receiver

// QueuedStores is how many requests wait for a group committer to take them.
func QueuedStores(rc *Receiver) int { return len(rc.group.queue) }

// Unverified is how many requests hold the unverified memory budget, and how
// much of it.
func Unverified(rc *Receiver) (requests int, bytes int64) { return rc.budget.usage() }
