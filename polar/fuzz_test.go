package polar_test

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/relayhq/relay/polar"
)

const fuzzSecret = "polar_whs_fuzz"

// FuzzVerify feeds arbitrary headers and bodies to the verifier: it must
// never panic, must accept exactly what was signed with the secret, and must
// reject the same body once a byte of it changes.
func FuzzVerify(f *testing.F) {
	f.Add("msg_1", int64(0), []byte(`{"type":"order.paid","data":{}}`), "")
	f.Add("msg_2", int64(-400), []byte("{}"), "v1,AAAA")
	f.Add("", int64(10), []byte{}, "v1,")
	f.Add("msg_3", int64(1), []byte{0xff, 0x00}, "v2,abc v1,def  v1")
	f.Fuzz(func(t *testing.T, id string, offset int64, body []byte, sig string) {
		v, err := polar.NewVerifier([]string{fuzzSecret})
		if err != nil {
			t.Fatal(err)
		}
		ts := time.Now().Add(time.Duration(offset%600) * time.Second)

		// Arbitrary signature headers: no panic, and never accepted unless
		// the signature is the real one.
		h := http.Header{}
		h.Set(polar.HeaderID, id)
		h.Set(polar.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
		h.Set(polar.HeaderSignature, sig)
		real := polar.Sign(fuzzSecret, id, ts, body)
		if _, err := v.Verify(body, h); err == nil && !bytes.Contains([]byte(sig), []byte(real[3:])) {
			t.Fatalf("accepted a signature that is not the real one: %q", sig)
		}

		// The real signature within tolerance passes; any changed body fails.
		h.Set(polar.HeaderSignature, real)
		_, err = v.Verify(body, h)
		inTolerance := offset%600 > -290 && offset%600 < 290
		if id != "" && inTolerance && err != nil {
			t.Fatalf("rejected a valid signature: %v", err)
		}
		if err == nil {
			tampered := append(bytes.Clone(body), 'x')
			if _, err := v.Verify(tampered, h); err == nil {
				t.Fatal("accepted a tampered body")
			}
		}
	})
}

// FuzzParse feeds arbitrary bodies to the envelope and payload parsers: no
// panic, and what parses satisfies what the workers rely on.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"type":"order.paid","timestamp":"2026-11-20T10:15:09Z","data":{"id":"o","total_amount":1,"refunded_amount":9223372036854775807,"refunded_tax_amount":1}}`))
	f.Add([]byte(`{"type":"refund.updated","data":{"id":"r","order_id":"o","amount":-1}}`))
	f.Add([]byte(`{"type":"checkout.expired","data":{"id":"c","metadata":{"kind":"inventory_checkout","checkoutId":1}}}`))
	f.Add([]byte(`{"type":"a","type":"b","data":[[[[[[[[[[]]]]]]]]]]}`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, body []byte) {
		env, err := polar.ParseEnvelope(body)
		if err != nil {
			return
		}
		if env.Type == "" {
			t.Fatal("envelope without a type parsed")
		}
		if o, err := polar.ParseOrder(env.Data); err == nil {
			if o.ID == "" || o.TotalAmount < 0 || o.RefundedTotal() < 0 {
				t.Fatalf("order parsed with id %q, total %d, refunded %d", o.ID, o.TotalAmount, o.RefundedTotal())
			}
			o.Metadata.Storefront()
		}
		if r, err := polar.ParseRefund(env.Data); err == nil && (r.Amount < 0 || r.Amount+r.TaxAmount < 0) {
			t.Fatalf("refund parsed with amount %d + %d", r.Amount, r.TaxAmount)
		}
		if c, err := polar.ParseCheckout(env.Data); err == nil {
			c.Metadata.Storefront()
		}
		polar.LabelFor(env.Type)
	})
}
