// Package text holds the string checks and cuts that several packages make
// on input they echo, log or store, and the NULL an empty string stands for
// in their SQL.
package text

import (
	"strings"
	"unicode/utf8"
)

// IsUUID reports whether s is a UUID written as PostgreSQL writes one
// (8-4-4-4-12 hex digits), in either case.
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}

// Cut returns s cut to at most n bytes, between characters where s is
// valid UTF-8.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// In valid UTF-8 a character starts within any UTFMax bytes.
	for i := n; i > 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}

// Abbrev is Cut followed by "…" when it cut anything.
func Abbrev(s string, n int) string {
	if c := Cut(s, n); len(c) < len(s) {
		return c + "…"
	}
	return s
}

// Storable makes s storable as PostgreSQL text: valid UTF-8 (U+FFFD for
// what is not), no NUL, at most n bytes, cut between characters.
func Storable(s string, n int) string {
	return Cut(strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", ""), n)
}

// NullIfEmpty is s as an SQL parameter: nil (NULL) when s is empty, as the
// platform's endpoint has no workspace or environment.
func NullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
