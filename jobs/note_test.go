package jobs

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestRefusalNoteIsCutBetweenCharacters: a long reason is cut to 500 bytes
// without leaving half a character on the inbox row.
func TestRefusalNoteIsCutBetweenCharacters(t *testing.T) {
	long := errors.New(strings.Repeat("x", 490) + "ééééé") // with "refused: " (9 bytes) the first é spans bytes 499 and 500
	note := refusalNote(long)
	if !utf8.ValidString(note) || len(note) > 500 || !strings.HasSuffix(note, "x") {
		t.Fatalf("note of %d bytes, valid UTF-8 %v, ends %q; want at most 500 valid bytes cut before the é", len(note), utf8.ValidString(note), note[len(note)-3:])
	}
	if short := refusalNote(errors.New("another workspace")); short != "refused: another workspace" {
		t.Fatalf("short note %q", short)
	}
}
