package polarapi

import (
	"crypto/sha256"
	"sync"
)

// Clients hands out one Client per token and environment, so that every
// caller in a process (a reconciliation pass, relay connect through the
// admin API) shares that organization's request budget.
type Clients struct {
	cfg Config

	mu      sync.Mutex
	clients map[clientKey]*Client
}

// clientKey holds a hash of the token, not the token.
type clientKey struct {
	environment string
	token       [sha256.Size]byte
}

// NewClients returns an empty set of clients made with cfg.
func NewClients(cfg Config) *Clients {
	return &Clients{cfg: cfg, clients: map[clientKey]*Client{}}
}

// Config is what the clients are made with.
func (cs *Clients) Config() Config { return cs.cfg }

// Get returns the client of token in environment, made on first use.
func (cs *Clients) Get(environment, token string) (*Client, error) {
	k := clientKey{environment: environment, token: sha256.Sum256([]byte(token))}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c, ok := cs.clients[k]; ok {
		return c, nil
	}
	c, err := New(cs.cfg, environment, token)
	if err != nil {
		return nil, err
	}
	cs.clients[k] = c
	return c, nil
}

// Forget drops the client of token in environment (a token replaced or
// removed).
func (cs *Clients) Forget(environment, token string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.clients, clientKey{environment: environment, token: sha256.Sum256([]byte(token))})
}
