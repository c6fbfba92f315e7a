// Package polar knows Polar's webhooks: how they are signed, the envelope
// every event shares and the payloads relay acts on. It knows nothing of
// HTTP servers, databases or queues.
package polar

import (
	"encoding/base64"
	"errors"
	"fmt"
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
	hooks []*standardwebhooks.Webhook
}

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
		for _, key := range Keys(secret) {
			hook, err := standardwebhooks.NewWebhookRaw(key)
			if err != nil {
				return nil, fmt.Errorf("polar: webhook key: %w", err)
			}
			v.hooks = append(v.hooks, hook)
		}
	}
	if len(v.hooks) == 0 {
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
func (v *Verifier) Verify(body []byte, header http.Header) (Delivery, error) {
	id, ts, sig := header.Get(HeaderID), header.Get(HeaderTimestamp), header.Get(HeaderSignature)
	if id == "" || ts == "" || sig == "" {
		return Delivery{}, ErrMissingHeaders
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return Delivery{}, ErrInvalidHeaders
	}
	var last error
	for _, hook := range v.hooks {
		err := hook.Verify(body, header)
		if err == nil {
			return Delivery{ID: id, Timestamp: time.Unix(unix, 0).UTC()}, nil
		}
		last = err
	}
	switch {
	case errors.Is(last, standardwebhooks.ErrMessageTooOld):
		return Delivery{}, ErrTimestampTooOld
	case errors.Is(last, standardwebhooks.ErrMessageTooNew):
		return Delivery{}, ErrTimestampTooNew
	case errors.Is(last, standardwebhooks.ErrInvalidHeaders):
		return Delivery{}, ErrInvalidHeaders
	default:
		return Delivery{}, ErrSignatureMismatch
	}
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
