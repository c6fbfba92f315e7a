// Package polar knows Polar's webhooks: how they are signed, the envelope
// every event shares and the payloads relay acts on. It knows nothing of
// HTTP servers, databases or queues.
package polar

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Header names of a Standard Webhooks delivery.
const (
	HeaderID        = standardwebhooks.HeaderWebhookID
	HeaderTimestamp = standardwebhooks.HeaderWebhookTimestamp
	HeaderSignature = standardwebhooks.HeaderWebhookSignature
)

// Reasons a delivery fails verification. They are short and safe to show to
// the caller: none of them echoes the request.
var (
	ErrMissingHeaders    = errors.New("missing webhook headers")
	ErrInvalidHeaders    = errors.New("malformed webhook headers")
	ErrTimestampTooOld   = errors.New("webhook timestamp too old")
	ErrTimestampTooNew   = errors.New("webhook timestamp too new")
	ErrSignatureMismatch = errors.New("no matching signature")
)

// Delivery is what a verified request's headers say about it.
type Delivery struct {
	ID        string
	Timestamp time.Time
}

// Verifier checks Standard Webhooks signatures with Polar's key convention.
type Verifier struct {
	keys [][]byte
}

// tolerance is how far a delivery's timestamp may be from now, as in the
// Standard Webhooks library.
const tolerance = 5 * time.Minute

// NewVerifier returns a Verifier that accepts a signature made with any of
// secrets, so that a secret can be rotated without downtime.
//
// Polar's key is the secret string's UTF-8 bytes, prefix included, even when
// it starts with "whsec_". Like Polar's newest SDK, a secret that is
// "whsec_<base64>" or plain base64 is also tried decoded, for true Standard
// Webhooks secrets.
func NewVerifier(secrets []string) (*Verifier, error) {
	v := &Verifier{}
	for _, secret := range secrets {
		if secret == "" {
			continue
		}
		v.keys = append(v.keys, Keys(secret)...)
	}
	if len(v.keys) == 0 {
		return nil, errors.New("polar: no webhook secret configured")
	}
	return v, nil
}

// Keys lists the HMAC keys a secret may stand for, Polar's convention first.
func Keys(secret string) [][]byte {
	keys := [][]byte{[]byte(secret)}
	encoded := strings.TrimPrefix(secret, "whsec_")
	if decoded, err := base64.StdEncoding.DecodeString(encoded); err == nil && len(decoded) > 0 {
		keys = append(keys, decoded)
	}
	return keys
}

// Verify checks body against the signature headers. It must be given the raw
// body bytes exactly as received.
//
// It accepts and refuses exactly what the Standard Webhooks library does
// (TestVerifyAsTheLibrary), but writes id, timestamp and body into each
// key's HMAC in turn: the library builds the signed string with Sprintf,
// copying the body three times per key (BenchmarkVerify).
func (v *Verifier) Verify(body []byte, header http.Header) (Delivery, error) {
	id, ts, sig := header.Get(HeaderID), header.Get(HeaderTimestamp), header.Get(HeaderSignature)
	if id == "" || ts == "" || sig == "" {
		return Delivery{}, ErrMissingHeaders
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return Delivery{}, ErrInvalidHeaders
	}
	timestamp := time.Unix(unix, 0)
	now := time.Now()
	switch {
	case now.Sub(timestamp) > tolerance:
		return Delivery{}, ErrTimestampTooOld
	case timestamp.After(now.Add(tolerance)):
		return Delivery{}, ErrTimestampTooNew
	}

	// What is signed: id.timestamp.body, the timestamp in decimal as parsed
	// (a header of "+0123" signs "123").
	prefix := make([]byte, 0, len(id)+22)
	prefix = append(prefix, id...)
	prefix = append(prefix, '.')
	prefix = strconv.AppendInt(prefix, unix, 10)
	prefix = append(prefix, '.')
	signatures := []byte(sig)
	var sum [sha256.Size]byte
	var expected [44]byte // base64 of a SHA-256 sum
	for _, key := range v.keys {
		mac := hmac.New(sha256.New, key)
		mac.Write(prefix)
		mac.Write(body)
		base64.StdEncoding.Encode(expected[:], mac.Sum(sum[:0]))
		if hasSignature(signatures, expected[:]) {
			return Delivery{ID: id, Timestamp: timestamp.UTC()}, nil
		}
	}
	return Delivery{}, ErrSignatureMismatch
}

// hasSignature says whether the space-separated "version,signature" list
// holds expected as a v1 signature, read as the library reads it: a field
// without a comma is skipped, and a signature ends at a second comma.
func hasSignature(signatures, expected []byte) bool {
	for field := range bytes.SplitSeq(signatures, []byte(" ")) {
		version, rest, ok := bytes.Cut(field, []byte(","))
		if !ok || string(version) != "v1" {
			continue
		}
		signature, _, _ := bytes.Cut(rest, []byte(","))
		if hmac.Equal(signature, expected) {
			return true
		}
	}
	return false
}

// Sign returns the webhook-signature header value Polar would send for body,
// keyed with the secret's UTF-8 bytes.
func Sign(secret, id string, timestamp time.Time, body []byte) string {
	hook, _ := standardwebhooks.NewWebhookRaw([]byte(secret)) // never fails
	sig, _ := hook.Sign(id, timestamp, body)                  // never fails
	return sig
}

// SignedHeaders returns the three headers of a delivery signed like Polar's.
func SignedHeaders(secret, id string, timestamp time.Time, body []byte) http.Header {
	h := http.Header{}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(timestamp.Unix(), 10))
	h.Set(HeaderSignature, Sign(secret, id, timestamp, body))
	return h
}
