// Package endpoints holds each workspace's Polar webhook signing secrets:
// stored encrypted in PostgreSQL, administered by Store, and verified
// against from memory by Cache, which every change reaches within seconds
// on every replica.
package endpoints

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// The variables a Keyring is read from.
const (
	EnvKey     = "RELAY_SECRETS_KEY"
	EnvKeyFile = "RELAY_SECRETS_KEY_FILE"
)

// ErrNoKey is returned by what must encrypt or decrypt when no key is
// configured.
var ErrNoKey = errors.New("no secrets key configured: set " + EnvKey + " or " + EnvKeyFile +
	" (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)")

// Keyring holds the keys endpoint secrets are encrypted with: the first
// encrypts, every one decrypts, so that a key can be rotated (add the new
// key first, run `relay endpoints rekey`, drop the old one).
type Keyring struct {
	source string // the variable the keys came from, for error messages
	keys   []key
}

type key struct {
	id   string // short fingerprint stored with each row
	aead cipher.AEAD
}

// ParseKeyring reads RELAY_SECRETS_KEY or RELAY_SECRETS_KEY_FILE through
// getenv: base64 of exactly 32 bytes per key, several separated by commas
// or newlines. With neither set it returns an empty keyring, which can
// list and remove secrets but not add or read them. Errors name the
// variable and the key's position, never key material.
func ParseKeyring(getenv func(string) string) (*Keyring, error) {
	raw, source := getenv(EnvKey), EnvKey
	if path := strings.TrimSpace(getenv(EnvKeyFile)); path != "" {
		if strings.TrimSpace(raw) != "" {
			return nil, fmt.Errorf("set %s or %s, not both", EnvKey, EnvKeyFile)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			// The path is the operator's own; the error says what failed.
			return nil, fmt.Errorf("%s: %w", EnvKeyFile, err)
		}
		raw, source = string(b), EnvKeyFile
	}
	k := &Keyring{source: source}
	n := 0
	for part := range strings.FieldsFuncSeq(raw, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		n++
		b, err := base64.StdEncoding.DecodeString(part)
		if err != nil {
			return nil, fmt.Errorf("%s: key %d is not base64", source, n)
		}
		if len(b) != 32 {
			return nil, fmt.Errorf("%s: key %d is %d bytes, want 32 (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)", source, n, len(b))
		}
		kk, err := newKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: key %d: %w", source, n, err)
		}
		for _, other := range k.keys {
			if other.id == kk.id {
				return nil, fmt.Errorf("%s: key %d repeats an earlier key", source, n)
			}
		}
		k.keys = append(k.keys, kk)
	}
	return k, nil
}

func newKey(b []byte) (key, error) {
	block, err := aes.NewCipher(b)
	if err != nil {
		return key{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return key{}, err
	}
	return key{id: keyID(b), aead: aead}, nil
}

// keyID fingerprints a key for the key_id column. The key is 32 random
// bytes, so a truncated hash of it gives nothing away; the prefix keeps the
// hash from matching any other use of the key.
func keyID(b []byte) string {
	sum := sha256.Sum256(append([]byte("relay endpoint secrets key id\x00"), b...))
	return hex.EncodeToString(sum[:4])
}

// Configured reports whether the keyring has a key.
func (k *Keyring) Configured() bool { return k != nil && len(k.keys) > 0 }

// Source is the variable the keys were read from.
func (k *Keyring) Source() string {
	if k == nil || k.source == "" {
		return EnvKey
	}
	return k.source
}

// PrimaryID is the fingerprint of the key that encrypts, "" without keys.
func (k *Keyring) PrimaryID() string {
	if !k.Configured() {
		return ""
	}
	return k.keys[0].id
}

// has reports whether the keyring holds the key with fingerprint id.
func (k *Keyring) has(id string) bool {
	if k == nil {
		return false
	}
	for _, kk := range k.keys {
		if kk.id == id {
			return true
		}
	}
	return false
}

// additionalData binds a ciphertext to its row: opened under another id,
// workspace or environment, it fails.
func additionalData(id, workspace, environment string) []byte {
	return []byte("relay endpoint secret v1\x00" + id + "\x00" + workspace + "\x00" + environment)
}

// seal encrypts plaintext with the first key under a fresh random nonce,
// returning nonce||ciphertext and the key's fingerprint.
func (k *Keyring) seal(id, workspace, environment string, plaintext []byte) ([]byte, string, error) {
	if !k.Configured() {
		return nil, "", ErrNoKey
	}
	kk := k.keys[0]
	nonce := make([]byte, kk.aead.NonceSize(), kk.aead.NonceSize()+len(plaintext)+kk.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, "", fmt.Errorf("random nonce: %w", err)
	}
	return kk.aead.Seal(nonce, nonce, plaintext, additionalData(id, workspace, environment)), kk.id, nil
}

// errCannotDecrypt means no configured key opens a ciphertext: the wrong
// key, or a ciphertext that is not this row's.
var errCannotDecrypt = errors.New("cannot decrypt")

// open decrypts what seal returned. The key named by keyID is tried; a
// ciphertext whose key is not in the keyring, or that fails
// authentication, is errCannotDecrypt.
func (k *Keyring) open(id, workspace, environment, keyID string, ciphertext []byte) ([]byte, error) {
	if !k.Configured() {
		return nil, ErrNoKey
	}
	for _, kk := range k.keys {
		if kk.id != keyID {
			continue
		}
		ns := kk.aead.NonceSize()
		if len(ciphertext) < ns+kk.aead.Overhead() {
			return nil, errCannotDecrypt
		}
		plain, err := kk.aead.Open(nil, ciphertext[:ns], ciphertext[ns:], additionalData(id, workspace, environment))
		if err != nil {
			return nil, errCannotDecrypt
		}
		return plain, nil
	}
	return nil, errCannotDecrypt
}

// Sealed is a value another table stores encrypted with the keyring: the
// ciphertext and the fingerprint of the key that made it.
type Sealed struct {
	Ciphertext []byte
	KeyID      string
}

// SealFor encrypts plaintext for a row of another table (Polar tokens of
// package connections), as endpoint secrets are: the first key, a fresh
// nonce, and purpose and the row's identity as additional data, so that a
// ciphertext is opened only as what and where it was sealed.
func (k *Keyring) SealFor(purpose string, identity []string, plaintext []byte) (Sealed, error) {
	if !k.Configured() {
		return Sealed{}, ErrNoKey
	}
	kk := k.keys[0]
	nonce := make([]byte, kk.aead.NonceSize(), kk.aead.NonceSize()+len(plaintext)+kk.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, fmt.Errorf("random nonce: %w", err)
	}
	return Sealed{Ciphertext: kk.aead.Seal(nonce, nonce, plaintext, additionalDataFor(purpose, identity)), KeyID: kk.id}, nil
}

// OpenFor decrypts what SealFor returned for the same purpose and
// identity. A ciphertext no configured key opens is an error naming
// neither key nor plaintext.
func (k *Keyring) OpenFor(purpose string, identity []string, s Sealed) ([]byte, error) {
	if !k.Configured() {
		return nil, ErrNoKey
	}
	for _, kk := range k.keys {
		if kk.id != s.KeyID {
			continue
		}
		ns := kk.aead.NonceSize()
		if len(s.Ciphertext) < ns+kk.aead.Overhead() {
			return nil, errCannotDecrypt
		}
		plain, err := kk.aead.Open(nil, s.Ciphertext[:ns], s.Ciphertext[ns:], additionalDataFor(purpose, identity))
		if err != nil {
			return nil, errCannotDecrypt
		}
		return plain, nil
	}
	return nil, errCannotDecrypt
}

// KeyIDs are the fingerprints of the configured keys, the encrypting one
// first.
func (k *Keyring) KeyIDs() []string {
	var ids []string
	if k != nil {
		for _, kk := range k.keys {
			ids = append(ids, kk.id)
		}
	}
	return ids
}

// additionalDataFor never equals an endpoint secret's additional data:
// its prefix differs.
func additionalDataFor(purpose string, identity []string) []byte {
	return []byte("relay " + purpose + " v1\x00" + strings.Join(identity, "\x00"))
}
