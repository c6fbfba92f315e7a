package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// A DATABASE_URL's password must never be printed, in an error or a log
// line, whichever of its forms it takes (a postgres:// URL, its query's
// password=, or libpq's keyword=value pairs, quoted or spaced) and
// whatever the message is: pgx's own errors quote the connection string,
// redacted only as far as pgx recognises it. So relay does not redact a
// connection string by its syntax; it finds the password in it every way
// the string could hold one, and takes that text out of whatever is about
// to be printed.

// hiddenPassword replaces a password in printed text.
const hiddenPassword = "xxxxx"

var (
	kvPassword    = regexp.MustCompile(`(?i)\b\w*password\s*=\s*(?:'((?:[^'\\]|\\.)*)'?|(\S+))`)
	queryPassword = regexp.MustCompile(`(?i)[?&][^=&#]*password=([^&#]*)`)
)

// dsnPasswords returns every text of dsn that may be a password, longest
// first, each also as JSON and Go quoting would escape it in a log line.
func dsnPasswords(dsn string) []string {
	var found []string
	add := func(s string) {
		if s == "" {
			return
		}
		found = append(found, s)
		if u, err := url.PathUnescape(s); err == nil {
			found = append(found, u)
		}
		if u, err := url.QueryUnescape(s); err == nil {
			found = append(found, u)
		}
	}
	if cfg, err := pgconn.ParseConfig(dsn); err == nil {
		add(cfg.Password)
	}
	for _, m := range kvPassword.FindAllStringSubmatch(dsn, -1) {
		add(m[1])
		add(strings.NewReplacer(`\'`, `'`, `\\`, `\`).Replace(m[1]))
		add(m[2])
	}
	for _, m := range queryPassword.FindAllStringSubmatch(dsn, -1) {
		add(m[1])
	}
	// A URL's userinfo: everything between the scheme and the last '@'
	// before the path, parsed or not.
	if _, rest, ok := strings.Cut(dsn, "://"); ok {
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
				add(pw)
			}
		}
	}
	var out []string
	for _, s := range found {
		q, _ := json.Marshal(s)
		out = append(out, s, string(q[1:len(q)-1]), strings.Trim(strconv.Quote(s), `"`))
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out)
}

// redactDSN returns text with every password dsn may hold replaced.
func redactDSN(text, dsn string) string {
	for _, pw := range dsnPasswords(dsn) {
		text = strings.ReplaceAll(text, pw, hiddenPassword)
	}
	return text
}

// redactedError is an error whose text has the database password taken out;
// errors.Is and errors.As still see the original.
type redactedError struct {
	err  error
	text string
}

func (e *redactedError) Error() string { return e.text }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr returns err with dsn's password taken out of its text.
func redactErr(err error, dsn string) error {
	if err == nil || dsn == "" {
		return err
	}
	text := redactDSN(err.Error(), dsn)
	if text == err.Error() {
		return err
	}
	return &redactedError{err: err, text: text}
}

// redactingWriter takes dsn's password out of every log line written to w.
// slog writes a record in one Write. A line without it (every one, unless
// something quotes the connection string) is passed on as it is.
type redactingWriter struct {
	w         io.Writer
	passwords [][]byte
}

func newRedactingWriter(w io.Writer, dsn string) io.Writer {
	pws := dsnPasswords(dsn)
	if len(pws) == 0 {
		return w
	}
	r := &redactingWriter{w: w}
	for _, pw := range pws {
		r.passwords = append(r.passwords, []byte(pw))
	}
	return r
}

func (r *redactingWriter) Write(p []byte) (int, error) {
	out := p
	for _, pw := range r.passwords {
		if bytes.Contains(out, pw) {
			out = bytes.ReplaceAll(out, pw, []byte(hiddenPassword))
		}
	}
	if _, err := r.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
