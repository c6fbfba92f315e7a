package text

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestIsUUID(t *testing.T) {
	for s, want := range map[string]bool{
		"0b7f3c2e-5d1a-4c8e-9f00-1a2b3c4d5e6f": true,
		"0B7F3C2E-5D1A-4C8E-9F00-1A2B3C4D5E6F": true,
		"0b7f3c2e5d1a4c8e9f001a2b3c4d5e6f":     false, // PostgreSQL reads it; relay's ids never look like this
		"0b7f3c2e-5d1a-4c8e-9f00-1a2b3c4d5e6g": false,
		"0b7f3c2e+5d1a-4c8e-9f00-1a2b3c4d5e6f": false,
		"0b7f3c2e-5d1a-4c8e-9f00-1a2b3c4d5é":   false, // 36 bytes, not 36 characters
		"":                                     false,
	} {
		if got := IsUUID(s); got != want {
			t.Errorf("IsUUID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestCutKeepsCharactersWhole(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly", 7, "exactly"},
		{"abcdef", 3, "abc"},
		{"xé", 2, "x"},  // é is 2 bytes: cut before it
		{"x€", 3, "x"},  // € is 3 bytes
		{"x😀y", 4, "x"}, // 😀 is 4 bytes
		{"x😀y", 5, "x😀"},
		{"\x80\x80\x80\x80\x80", 4, "\x80\x80\x80\x80"}, // not UTF-8: a plain cut
		{"abc", 0, ""},
	} {
		if got := Cut(tc.s, tc.n); got != tc.want {
			t.Errorf("Cut(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
	if got := Abbrev("abcdef", 3); got != "abc…" {
		t.Errorf("Abbrev cut = %q", got)
	}
	if got := Abbrev("abc", 3); got != "abc" {
		t.Errorf("Abbrev whole = %q", got)
	}
}

func TestStorable(t *testing.T) {
	got := Storable("a\x00b\xffc"+strings.Repeat("é", 10), 10)
	if got != "ab\uFFFDcéé" || !utf8.ValidString(got) || len(got) > 10 {
		t.Fatalf("Storable = %q (%d bytes)", got, len(got))
	}
}

func TestNullIfEmpty(t *testing.T) {
	if p := NullIfEmpty(""); p != nil {
		t.Errorf("NullIfEmpty(\"\") = %q, want nil", *p)
	}
	if p := NullIfEmpty("sandbox"); p == nil || *p != "sandbox" {
		t.Errorf("NullIfEmpty(\"sandbox\") = %v", p)
	}
}
