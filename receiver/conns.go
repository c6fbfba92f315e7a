package receiver

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// DefaultMaxConnections is how many connections the webhook listener holds
// open at once by default: as many as the default unverified budget admits
// requests (DefaultMaxUnverifiedBytes / 64 KiB), far above what Polar's
// delivery workers open.
const DefaultMaxConnections = 1024

// ConnLimit is a listener that holds at most a fixed number of connections
// open. Every accepted connection costs a goroutine and net/http's buffers
// (headers up to MaxHeaderBytes) before a byte of it is verified, so the
// count must be bounded like the bodies are. Past the limit Accept waits:
// further connections queue in the kernel's backlog and hold nothing here
// until a slot frees, which the server's read timeouts guarantee for slow
// senders. Idle keep-alive connections are closed when a connection waits,
// so that a sender parking idle connections cannot lock others out.
//
// Its ConnState method must be the server's http.Server.ConnState.
type ConnLimit struct {
	net.Listener
	slots   chan struct{}
	closed  chan struct{}
	close   sync.Once
	waiting atomic.Int32

	mu   sync.Mutex
	idle map[net.Conn]struct{}
}

// LimitConnections returns ln holding at most n connections open at once.
func LimitConnections(ln net.Listener, n int) *ConnLimit {
	return &ConnLimit{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{}),
		idle: make(map[net.Conn]struct{})}
}

// Open returns how many connections are open.
func (l *ConnLimit) Open() int { return len(l.slots) }

// Accept accepts a connection, then waits for a free slot for it: one
// connection at most waits here, the rest in the kernel's backlog.
func (l *ConnLimit) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case l.slots <- struct{}{}:
	default:
		l.waiting.Add(1)
		l.closeIdle()
		select {
		case l.slots <- struct{}{}:
			l.waiting.Add(-1)
		case <-l.closed:
			l.waiting.Add(-1)
			c.Close()
			return nil, net.ErrClosed
		}
	}
	lc := &limitedConn{Conn: c}
	lc.release = sync.OnceFunc(func() {
		l.mu.Lock()
		delete(l.idle, lc)
		l.mu.Unlock()
		<-l.slots
	})
	return lc, nil
}

// Close closes the listener and ends a waiting Accept.
func (l *ConnLimit) Close() error {
	l.close.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// ConnState tracks which connections are idle between requests, and closes
// one that turns idle while a new connection waits for its slot.
func (l *ConnLimit) ConnState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateIdle:
		if l.waiting.Load() > 0 {
			c.Close()
			return
		}
		l.mu.Lock()
		l.idle[c] = struct{}{}
		l.mu.Unlock()
	case http.StateActive, http.StateHijacked, http.StateClosed:
		l.mu.Lock()
		delete(l.idle, c)
		l.mu.Unlock()
	}
}

func (l *ConnLimit) closeIdle() {
	l.mu.Lock()
	idle := make([]net.Conn, 0, len(l.idle))
	for c := range l.idle {
		idle = append(idle, c)
	}
	l.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// limitedConn gives its slot back once, however often it is closed.
type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
