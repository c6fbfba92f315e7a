package spool

import (
	"cmp"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/relayhq/relay/inbox"
)

// asideExt ends the name of a set-aside event's file; anything else in the
// directory (a write cut short by a crash) is not one.
const asideExt = ".json"

// ErrNotSetAside means no set-aside event has the id given.
var ErrNotSetAside = errors.New("no such set-aside webhook")

// AsideDir is where the spool in dir keeps the events Drain set aside: one
// file each, outside the spool's bbolt file, so that they can be listed,
// retried and dropped while relay holds the spool open.
func AsideDir(dir string) string { return filepath.Join(dir, "aside") }

// Aside is an event Drain set aside, with its record and body exactly as
// they were spooled. WebhookID, EventType and SpooledAt are read from the
// record when it decodes that far.
type Aside struct {
	ID         string    `json:"-"` // the file's name without .json
	SetAsideAt time.Time `json:"set_aside_at"`
	Reason     string    `json:"reason"`
	WebhookID  string    `json:"webhook_id,omitempty"`
	EventType  string    `json:"event_type,omitempty"`
	SpooledAt  time.Time `json:"spooled_at,omitzero"`
	Record     []byte    `json:"record"`
	Body       []byte    `json:"body"`
}

// Event decodes the set-aside event, as Drain would: it fails the same way
// unless this relay reads the record now (a newer version, say).
func (a *Aside) Event() (*inbox.Event, error) {
	return decode([]byte(a.ID), a.Record, a.Body)
}

// setAside writes sp to a file of its own in the aside directory and makes
// it durable (file and directory fsync'd) before Drain removes it from the
// spool: a crash in between leaves it in both, to be set aside or
// committed again, a duplicate the inbox drops.
func (s *Spool) setAside(sp *spooled, reason string) error {
	a := Aside{SetAsideAt: time.Now().UTC(), Reason: reason, Record: sp.meta, Body: sp.body}
	var rec record
	if json.Unmarshal(sp.meta, &rec) == nil {
		a.WebhookID, a.EventType, a.SpooledAt = rec.WebhookID, rec.EventType, rec.SpooledAt
	}
	// Unique and in order: the spool's keys are sequence numbers, and the
	// time tells them apart from a later spool file's.
	a.ID = a.SetAsideAt.Format("20060102T150405Z") + "-" + cmp.Or(strings.TrimLeft(hex.EncodeToString(sp.key), "0"), "0")
	b, err := json.Marshal(&a)
	if err != nil {
		return fmt.Errorf("set aside spooled webhook %s: %w", a.ID, err)
	}
	if err := writeDurably(s.asideDir, a.ID+asideExt, b); err != nil {
		return fmt.Errorf("set aside spooled webhook %s: %w", a.ID, err)
	}
	s.logger.Warn("spool: webhook set aside: it holds up the drain; `relay spool show` it, then retry or drop it",
		"id", a.ID, "webhook_id", a.WebhookID, "reason", a.Reason, "dir", s.asideDir)
	return nil
}

// writeDurably writes name in dir through a temporary file, renamed once
// fsync'd, and fsyncs dir.
func writeDurably(dir, name string, b []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) //nolint:errcheck // gone after the rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// countAside counts the set-aside events in dir.
func countAside(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list set-aside webhooks: %w", err)
	}
	n := 0
	for _, e := range entries {
		if isAside(e.Name()) {
			n++
		}
	}
	return n, nil
}

func isAside(name string) bool {
	return strings.HasSuffix(name, asideExt) && !strings.HasPrefix(name, ".")
}

// SetAside reads the events set aside from the spool in dir, oldest first.
// It needs no lock: relay may be running.
func SetAside(dir string) ([]*Aside, error) {
	entries, err := os.ReadDir(AsideDir(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list set-aside webhooks: %w", err)
	}
	var out []*Aside
	for _, e := range entries {
		if !isAside(e.Name()) {
			continue
		}
		a, err := ReadAside(dir, strings.TrimSuffix(e.Name(), asideExt))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	slices.SortStableFunc(out, func(a, b *Aside) int { return a.SetAsideAt.Compare(b.SetAsideAt) })
	return out, nil
}

// ReadAside reads the set-aside event id of the spool in dir.
func ReadAside(dir, id string) (*Aside, error) {
	if !validAsideID(id) {
		return nil, fmt.Errorf("set-aside webhook %q: %w", id, ErrNotSetAside)
	}
	b, err := os.ReadFile(filepath.Join(AsideDir(dir), id+asideExt))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("set-aside webhook %q: %w", id, ErrNotSetAside)
	}
	if err != nil {
		return nil, fmt.Errorf("read set-aside webhook %s: %w", id, err)
	}
	a := &Aside{ID: id}
	if err := json.Unmarshal(b, a); err != nil {
		return nil, fmt.Errorf("read set-aside webhook %s: %w", id, err)
	}
	return a, nil
}

// DropAside deletes the set-aside event id of the spool in dir for good.
func DropAside(dir, id string) error {
	if !validAsideID(id) {
		return fmt.Errorf("set-aside webhook %q: %w", id, ErrNotSetAside)
	}
	err := os.Remove(filepath.Join(AsideDir(dir), id+asideExt))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("set-aside webhook %q: %w", id, ErrNotSetAside)
	}
	if err != nil {
		return fmt.Errorf("drop set-aside webhook %s: %w", id, err)
	}
	return nil
}

// validAsideID refuses an id that would name a file elsewhere.
func validAsideID(id string) bool {
	return id != "" && !strings.HasPrefix(id, ".") && !strings.ContainsAny(id, `/\`)
}
