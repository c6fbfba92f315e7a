package polar_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/relayhq/relay/polar"
)

// libraryVerify is how relay verified before it wrote the HMAC itself: the
// Standard Webhooks library, one hook per key, the last failure's reason.
func libraryVerify(secrets []string, body []byte, header http.Header) error {
	var last error
	for _, secret := range secrets {
		for _, key := range polar.Keys(secret) {
			hook, _ := standardwebhooks.NewWebhookRaw(key)
			if last = hook.Verify(body, header); last == nil {
				return nil
			}
		}
	}
	return last
}

// sameReason maps the library's errors onto polar's.
func sameReason(lib, ours error) bool {
	switch {
	case lib == nil:
		return ours == nil
	case errors.Is(lib, standardwebhooks.ErrRequiredHeaders):
		return ours == polar.ErrMissingHeaders
	case errors.Is(lib, standardwebhooks.ErrMessageTooOld):
		return ours == polar.ErrTimestampTooOld
	case errors.Is(lib, standardwebhooks.ErrMessageTooNew):
		return ours == polar.ErrTimestampTooNew
	case errors.Is(lib, standardwebhooks.ErrInvalidHeaders):
		return ours == polar.ErrInvalidHeaders
	default:
		return ours == polar.ErrSignatureMismatch
	}
}

// TestVerifyAsTheLibrary pins Verify to the Standard Webhooks library on
// random deliveries: ids, timestamps inside and outside the tolerance and in
// odd spellings, bodies, secrets (Polar's and base64 ones, rotations), and
// signature headers mixing real, foreign, truncated and malformed entries.
func TestVerifyAsTheLibrary(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	randomBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	secretPool := []string{"polar_whs_a", "polar_whs_b", "whsec_c2VjcmV0LWtleS1vbmU=", "c2Vjb25kLWtleQ==", "whsec_", "whsec_!!"}
	accepted := 0
	for i := range 5000 {
		var secrets []string
		for range 1 + rng.IntN(3) {
			secrets = append(secrets, pick(secretPool...))
		}
		v, err := polar.NewVerifier(secrets)
		if err != nil {
			t.Fatal(err)
		}
		id := pick("msg_"+strconv.Itoa(i), "", "a.b", "ü", string(randomBytes(rng.IntN(40))))
		ts := time.Now().Add(time.Duration(rng.IntN(800)-400) * time.Second)
		tsHeader := pick(strconv.FormatInt(ts.Unix(), 10), "+"+strconv.FormatInt(ts.Unix(), 10),
			"0"+strconv.FormatInt(ts.Unix(), 10), "", "x", strconv.FormatInt(ts.Unix(), 10)+" ")
		body := randomBytes(rng.IntN(3000))
		if rng.IntN(4) == 0 {
			body = nil
		}
		// Mostly a key of the configured secrets, decoded ones included.
		signer := pick(secrets...)
		if rng.IntN(4) == 0 {
			signer = pick(append(secretPool, "polar_whs_other")...)
		}
		keys := polar.Keys(signer)
		hook, _ := standardwebhooks.NewWebhookRaw(keys[rng.IntN(len(keys))])
		sign := func(body []byte) string { s, _ := hook.Sign(id, ts, body); return s }
		real := sign(body)
		var entries []string
		for range rng.IntN(4) {
			entries = append(entries, pick(real, real, real+",extra", "v2"+real[2:], real[:len(real)-1], "v1,", "v1", ",", "",
				sign(append(bytes.Clone(body), 'x'))))
		}
		h := http.Header{}
		h.Set(polar.HeaderID, id)
		h.Set(polar.HeaderTimestamp, tsHeader)
		h.Set(polar.HeaderSignature, strings.Join(entries, pick(" ", "  ", ",")))
		if id == "" && rng.IntN(2) == 0 {
			h.Del(polar.HeaderID)
		}

		lib := libraryVerify(secrets, body, h)
		d, ours := v.Verify(body, h)
		if !sameReason(lib, ours) {
			t.Fatalf("case %d: library says %v, Verify says %v (secrets %q, signer %q, timestamp %q, signature %q)",
				i, lib, ours, secrets, signer, tsHeader, h.Get(polar.HeaderSignature))
		}
		if ours == nil {
			accepted++
			if d.ID != id || d.Timestamp.Unix() != ts.Unix() {
				t.Fatalf("case %d: delivery %+v, want id %q at %d", i, d, id, ts.Unix())
			}
		}
	}
	if accepted < 200 {
		t.Fatalf("only %d of 5000 cases were accepted (about 350 expected): the comparison hardly covers the accepting path", accepted)
	}
	t.Logf("%d of 5000 accepted", accepted)
}

// BenchmarkVerify verifies a delivery signed with the last of the
// configured secrets, so that every secret's key is tried: the cost of a
// delivery during a rotation, or of a forged one.
func BenchmarkVerify(b *testing.B) {
	for _, size := range []struct {
		name string
		body []byte
	}{{"2.7KB", bytes.Repeat([]byte("x"), 2700)}, {"1MiB", bytes.Repeat([]byte("x"), 1<<20)}} {
		for _, n := range []int{1, 3} {
			b.Run(fmt.Sprintf("body=%s/secrets=%d", size.name, n), func(b *testing.B) {
				var secrets []string
				for i := range n {
					secrets = append(secrets, fmt.Sprintf("polar_whs_bench_%d", i))
				}
				v, err := polar.NewVerifier(secrets)
				if err != nil {
					b.Fatal(err)
				}
				h := polar.SignedHeaders(secrets[n-1], "msg_bench", time.Now(), size.body)
				b.SetBytes(int64(len(size.body)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := v.Verify(size.body, h); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
