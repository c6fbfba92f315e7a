// Package polarfake is a faithful fake of the part of Polar's API relay
// uses, an http.Handler for httptest: its paths, organization access
// tokens per organization and environment with scopes (401 for a token it
// does not know, such as one from the other environment; 403 for a
// missing scope), {items, pagination} pages of at most 100 (422 past
// that), created_after/created_before and metadata[...] filters, sorting,
// a per-organization rate limit answered with 429 and Retry-After, and
// webhook endpoints with secrets and enabled. Objects are built from the
// shapes in testdata/api, checked against Polar's SDK.
//
// One Fake is one environment: run a production and a sandbox one side by
// side to test that they are kept apart.
package polarfake

import (
	"crypto/rand"
	"embed"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

//go:embed testdata/api/*.json
var fixtures embed.FS

// Scopes of an organization access token relay uses.
const (
	ScopeOrdersRead    = "orders:read"
	ScopeRefundsRead   = "refunds:read"
	ScopeProductsRead  = "products:read"
	ScopeWebhooksRead  = "webhooks:read"
	ScopeWebhooksWrite = "webhooks:write"
)

// AllScopes are every scope above.
var AllScopes = []string{ScopeOrdersRead, ScopeRefundsRead, ScopeProductsRead, ScopeWebhooksRead, ScopeWebhooksWrite}

// Fake is one environment of Polar's API.
type Fake struct {
	environment string

	mu     sync.Mutex
	now    func() time.Time
	orgs   map[string]*org
	tokens map[string]token
	counts map[string]int // "GET /v1/orders/" → requests
	seen   map[string]int // bearer token → requests carrying it
	fail   []int          // statuses the next requests get, in order
	hook   func(r *http.Request)
}

type token struct {
	org    string
	scopes []string
}

type org struct {
	id        string
	orders    []map[string]any
	refunds   []map[string]any
	products  []map[string]any
	endpoints []map[string]any
	// rate limit: at most rpm requests in any minute; 0 is unlimited
	rpm    int
	starts []time.Time
}

// New returns an empty fake of environment ("production" or "sandbox").
func New(environment string) *Fake {
	return &Fake{
		environment: environment,
		now:         time.Now,
		orgs:        map[string]*org{},
		tokens:      map[string]token{},
		counts:      map[string]int{},
		seen:        map[string]int{},
	}
}

// Environment is the environment the fake plays.
func (f *Fake) Environment() string { return f.environment }

// SetClock makes the fake read time from now (its rate limit and the
// created_at of what it creates).
func (f *Fake) SetClock(now func() time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = now
}

// AddOrganization creates an organization and returns its id.
func (f *Fake) AddOrganization() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := newUUID()
	f.orgs[id] = &org{id: id}
	return id
}

// AddToken returns a new organization access token of organization with
// scopes (AllScopes when none are given).
func (f *Fake) AddToken(organization string, scopes ...string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mustOrg(organization)
	if len(scopes) == 0 {
		scopes = AllScopes
	}
	t := "polar_oat_" + randomAlnum(43)
	f.tokens[t] = token{org: organization, scopes: slices.Clone(scopes)}
	return t
}

// RevokeToken makes token rejected (401) from now on.
func (f *Fake) RevokeToken(t string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.tokens, t)
}

// SetRateLimit limits organization to rpm requests a minute (0: none), as
// Polar limits each organization (500 in production, 100 in sandbox).
func (f *Fake) SetRateLimit(organization string, rpm int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mustOrg(organization).rpm = rpm
}

// FailNext answers the next len(statuses) authenticated requests with
// those statuses (e.g. 502, 503), whatever they asked.
func (f *Fake) FailNext(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = append(f.fail, statuses...)
}

// SetHook runs hook for every request before it is answered, outside the
// fake's lock: a test can add orders while a listing is under way.
func (f *Fake) SetHook(hook func(r *http.Request)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = hook
}

// Requests counts the requests to path ("GET /v1/orders/"), whatever
// their answer; "" counts every request.
func (f *Fake) Requests(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if path != "" {
		return f.counts[path]
	}
	n := 0
	for _, c := range f.counts {
		n += c
	}
	return n
}

// TokenRequests counts the requests that carried t, known or not.
func (f *Fake) TokenRequests(t string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[t]
}

func (f *Fake) mustOrg(id string) *org {
	o := f.orgs[id]
	if o == nil {
		panic("polarfake: no organization " + id)
	}
	return o
}

// fixture returns the JSON of the first item of a fixture's page.
func fixture(name string) []byte {
	b, err := fixtures.ReadFile("testdata/api/" + name)
	if err != nil {
		panic(err)
	}
	var page struct{ Items []json.RawMessage }
	if err := json.Unmarshal(b, &page); err != nil {
		panic(err)
	}
	return page.Items[0]
}

// fromTemplate returns a fresh object decoded from JSON.
func fromTemplate(b []byte) map[string]any {
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

// clone deep-copies a JSON object.
func clone(m map[string]any) map[string]any {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[:4], b[4:6], b[6:8], b[8:10], b[10:])
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func randomAlnum(n int) string {
	var sb strings.Builder
	for range n {
		i, err := rand.Int(rand.Reader, big.NewInt(int64(len(alnum))))
		if err != nil {
			panic(err)
		}
		sb.WriteByte(alnum[i.Int64()])
	}
	return sb.String()
}

func ts(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }
