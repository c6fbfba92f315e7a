package receiver

// QueuedStores is how many requests wait for a group committer to take them.
func QueuedStores(rc *Receiver) int { return len(rc.group.queue) }
