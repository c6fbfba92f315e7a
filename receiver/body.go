package receiver

import (
	"errors"
	"io"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// What a request that has not been verified yet may hold.
const (
	// unverifiedShare is the part of the budget a request takes when it is
	// admitted, before any byte of its body: it also stands for what its
	// connection holds besides the body (the server's buffers, a goroutine),
	// so the budget bounds how many requests read or verify at once.
	unverifiedShare = 64 << 10
	// exactBodyMax: a body announced up to this long is read into one buffer
	// of its length (Polar's events are a few KB). A longer or unannounced
	// one starts at firstChunk and doubles as its bytes arrive, so that what
	// it holds follows what was sent, not what its headers announce.
	exactBodyMax = 16 << 10
	firstChunk   = 4 << 10
)

// DefaultMaxUnverifiedBytes is the default of Options.MaxUnverifiedBytes:
// half of relay serve's default GOMEMLIMIT (128 MiB), or four of the
// largest bodies if that is more.
func DefaultMaxUnverifiedBytes(maxBodyBytes int64) int64 {
	return max(64<<20, 4*maxBodyBytes)
}

// errOverBudget: reading the body would take the requests not yet verified
// past Options.MaxUnverifiedBytes.
var errOverBudget = errors.New("unverified requests hold the memory budget")

// unverifiedBudget is the memory that requests not yet verified hold
// together. Past it a request is refused rather than queued: waiting would
// hold its connection and goroutine all the same.
type unverifiedBudget struct {
	max      int64
	requests prometheus.Gauge
	bytes    prometheus.Gauge

	mu    sync.Mutex
	used  int64
	inUse int // requests holding a share
}

// bodyLease is one request's part of the budget.
type bodyLease struct {
	b    *unverifiedBudget
	held int64
}

// admit takes a request's first share, or says the budget is spent.
func (b *unverifiedBudget) admit() (bodyLease, bool) {
	l := bodyLease{b: b}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+unverifiedShare > b.max {
		return l, false
	}
	b.used += unverifiedShare
	b.inUse++
	l.held = unverifiedShare
	b.requests.Set(float64(b.inUse))
	b.bytes.Set(float64(b.used))
	return l, true
}

// grow makes the lease hold at least n bytes, if the budget has them.
func (l *bodyLease) grow(n int64) bool {
	if n <= l.held {
		return true
	}
	b := l.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n-l.held > b.max {
		return false
	}
	b.used += n - l.held
	l.held = n
	b.bytes.Set(float64(b.used))
	return true
}

// release gives the lease back; the request is verified or answered. It may
// be called again.
func (l *bodyLease) release() {
	if l.held == 0 {
		return
	}
	b := l.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= l.held
	b.inUse--
	l.held = 0
	b.requests.Set(float64(b.inUse))
	b.bytes.Set(float64(b.used))
}

// usage is what the budget holds now.
func (b *unverifiedBudget) usage() (requests int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inUse, b.used
}

// readBody reads a body of at most maxBytes (r enforces it) into memory that
// grows with what has arrived, within the lease: a sender announcing a
// large body and trickling it holds what it sent, not what it announced.
// The lease counts the high-water mark: a buffer that doubled and the one it
// was copied from, under three times what arrived, one and a half times
// maxBytes at most.
func readBody(r io.Reader, contentLength, maxBytes int64, lease *bodyLease) ([]byte, error) {
	limit := maxBytes
	size := int64(firstChunk)
	if contentLength >= 0 {
		limit = min(contentLength, maxBytes)
		if contentLength <= exactBodyMax {
			size = contentLength
		}
	}
	size = min(size, limit)
	if !lease.grow(size) {
		return nil, errOverBudget
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			// Full: a body of the announced length usually ends with its
			// last bytes; else one more byte says whether it goes on.
			var probe [1]byte
			n, err := r.Read(probe[:])
			if n == 0 {
				if err == io.EOF {
					return buf, nil
				}
				if err != nil {
					return nil, err
				}
				continue
			}
			next := max(min(2*int64(cap(buf)), limit), int64(cap(buf))+firstChunk)
			if !lease.grow(int64(cap(buf)) + next) {
				return nil, errOverBudget
			}
			grown := make([]byte, len(buf), next)
			copy(grown, buf)
			buf = append(grown, probe[0])
			continue
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
