package polar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Envelope is what every Polar webhook body shares.
type Envelope struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// ErrNoType means a body is JSON but names no event type.
var ErrNoType = errors.New("event has no type")

// ParseEnvelope reads the envelope of a verified body: it checks that the
// whole body is JSON and reads the top level's type, timestamp and data, as
// json.Unmarshal into an Envelope would (case-insensitive keys, the last of
// repeated keys, null leaving a field unset). It runs on every request the
// receiver takes, so it makes one pass over the body instead of
// encoding/json's two, and decodes only the two short strings it keeps:
// several times faster on a 3 KB order. Data aliases body.
func ParseEnvelope(body []byte) (Envelope, error) {
	var env Envelope
	s := scanner{b: body}
	s.space()
	if s.i >= len(s.b) {
		return Envelope{}, s.fail(errSyntax)
	}
	if s.b[s.i] != '{' {
		// Valid JSON that is not an object is still an error for an envelope.
		if err := s.value(0); err != nil {
			return Envelope{}, s.fail(err)
		}
		if s.space(); s.i != len(s.b) {
			return Envelope{}, s.fail(errTrailing)
		}
		if isNull(bytes.TrimSpace(s.b)) {
			return Envelope{}, ErrNoType // what json.Unmarshal of null leaves
		}
		return Envelope{}, errors.New("parse event envelope: not a JSON object")
	}
	err := s.container(1, func(key, raw []byte) error {
		switch {
		case isNull(raw):
			if strings.EqualFold(string(key), "data") {
				env.Data = raw
			}
			return nil // null leaves the other fields as they are
		case strings.EqualFold(string(key), "type"):
			t, err := unquote(raw)
			if err != nil {
				return fmt.Errorf("type: %w", err)
			}
			env.Type = t
		case strings.EqualFold(string(key), "timestamp"):
			if err := env.Timestamp.UnmarshalJSON(raw); err != nil {
				return fmt.Errorf("timestamp: %w", err)
			}
		case strings.EqualFold(string(key), "data"):
			env.Data = raw
		}
		return nil
	})
	if err == nil {
		if s.space(); s.i != len(s.b) {
			err = errTrailing
		}
	}
	if err != nil {
		return Envelope{}, s.fail(err)
	}
	if env.Type == "" {
		return Envelope{}, ErrNoType
	}
	return env, nil
}

var (
	errTrailing = errors.New("data after the top-level value")
	errSyntax   = errors.New("invalid JSON")
	errDepth    = errors.New("nested too deeply")
)

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

// scanner checks JSON syntax as encoding/json does (it accepts invalid UTF-8
// in strings, as encoding/json does) and hands out the top level's members.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) fail(err error) error {
	if s.i >= len(s.b) && !errors.Is(err, errTrailing) {
		return fmt.Errorf("parse event envelope: unexpected end of JSON input")
	}
	return fmt.Errorf("parse event envelope: %w at offset %d", err, s.i)
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value scans any JSON value at s.i.
func (s *scanner) value(depth int) error {
	if s.i >= len(s.b) {
		return errSyntax
	}
	switch c := s.b[s.i]; {
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return errDepth
		}
		return s.container(depth+1, nil)
	case c == '"':
		_, err := s.str()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return errSyntax
	}
}

// container scans the array or object at s.i, whose values are at depth.
// For an object, a non-nil member gets each key, decoded, and raw value.
func (s *scanner) container(depth int, member func(key, raw []byte) error) error {
	open := s.b[s.i]
	end := byte(']')
	if open == '{' {
		end = '}'
	}
	s.i++
	s.space()
	if s.i < len(s.b) && s.b[s.i] == end {
		s.i++
		return nil
	}
	for {
		s.space()
		var key []byte
		if open == '{' {
			if s.i >= len(s.b) || s.b[s.i] != '"' {
				return errSyntax
			}
			start := s.i
			escaped, err := s.str()
			if err != nil {
				return err
			}
			if member != nil {
				key = s.b[start+1 : s.i-1]
				if escaped {
					k, err := unquote(s.b[start:s.i])
					if err != nil {
						return err
					}
					key = []byte(k)
				}
			}
			s.space()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return errSyntax
			}
			s.i++
			s.space()
		}
		vstart := s.i
		if err := s.value(depth); err != nil {
			return err
		}
		if member != nil {
			if err := member(key, s.b[vstart:s.i]); err != nil {
				return err
			}
		}
		s.space()
		if s.i >= len(s.b) {
			return errSyntax
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case end:
			s.i++
			return nil
		default:
			return errSyntax
		}
	}
}

// str scans a string at s.i and reports whether it holds escapes or
// non-ASCII bytes, which only a real decoder should turn into text.
func (s *scanner) str() (escaped bool, err error) {
	s.i++ // opening quote
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return escaped, nil
		case c < 0x20:
			return false, errSyntax
		case c >= 0x80:
			escaped = true
			s.i++
		case c == '\\':
			escaped = true
			s.i++
			if s.i >= len(s.b) {
				return false, errSyntax
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				s.i++
				for range 4 {
					if s.i >= len(s.b) || !isHex(s.b[s.i]) {
						return false, errSyntax
					}
					s.i++
				}
			default:
				return false, errSyntax
			}
		default:
			s.i++
		}
	}
	return false, errSyntax
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return errSyntax
	}
	switch c := s.b[s.i]; {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return errSyntax
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return errSyntax
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return errSyntax
		}
	}
	return nil
}

func (s *scanner) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

func (s *scanner) literal(word string) error {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return errSyntax
	}
	s.i += len(word)
	return nil
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isNull(raw []byte) bool { return string(raw) == "null" }

// unquote decodes a scanned JSON string, taking the fast path when it is
// plain ASCII without escapes.
func unquote(raw []byte) (string, error) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", errors.New("not a string")
	}
	plain := true
	for _, c := range raw[1 : len(raw)-1] {
		if c == '\\' || c >= 0x80 {
			plain = false
			break
		}
	}
	if plain {
		return string(raw[1 : len(raw)-1]), nil
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", err
	}
	return out, nil
}
