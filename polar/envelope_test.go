package polar_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/polar"
)

// referenceEnvelope is what ParseEnvelope must agree with: encoding/json.
func referenceEnvelope(body []byte) (polar.Envelope, error) {
	var env polar.Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return polar.Envelope{}, err
	}
	if env.Type == "" {
		return polar.Envelope{}, polar.ErrNoType
	}
	return env, nil
}

// sameAsReference fails t unless ParseEnvelope and encoding/json agree on
// body: both accept it with the same type, timestamp and data, or both
// refuse it.
func sameAsReference(t *testing.T, body []byte) {
	t.Helper()
	got, err := polar.ParseEnvelope(body)
	want, wantErr := referenceEnvelope(body)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("ParseEnvelope(%q): error %v, encoding/json: %v", truncateBody(body), err, wantErr)
	}
	if errors.Is(wantErr, polar.ErrNoType) != errors.Is(err, polar.ErrNoType) {
		t.Fatalf("ParseEnvelope(%q): error %v, encoding/json: %v", truncateBody(body), err, wantErr)
	}
	if got.Type != want.Type || !got.Timestamp.Equal(want.Timestamp) || !bytes.Equal(got.Data, want.Data) {
		t.Fatalf("ParseEnvelope(%q) = %q %v %q, encoding/json: %q %v %q", truncateBody(body),
			got.Type, got.Timestamp, truncateBody(got.Data), want.Type, want.Timestamp, truncateBody(want.Data))
	}
}

func truncateBody(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

func TestParseEnvelopeAgreesWithEncodingJSON(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	cases := []string{
		`{"type":"order.paid","timestamp":"2026-11-20T10:15:09.123456Z","data":{"id":"o"}}`,
		` {"type" : "order.paid" , "data" : null } `,
		`{"TYPE":"order.paid"}`,
		`{"Type":"a","type":"b"}`,
		`{"type":"a","type":null}`,
		`{"type":null}`,
		`{"\u0074ype":"order.\u0070aid"}`,
		`{"ſype":"x"}`, // folds to "type"? encoding/json says what it says
		`{"type":"caf\u00e9","timestamp":null}`,
		"{\"type\":\"\xff\xfe\"}",
		`{"type":"a","timestamp":"yesterday"}`,
		`{"type":"a","timestamp":5}`,
		`{"type":5}`,
		`{"type":"a","data":[1,-0.5e+10,true,false,null,"x",{"k":[]}]}`,
		`{"type":"a","data":01}`,
		`{"type":"a","data":1.}`,
		`{"type":"a","data":-}`,
		`{"type":"a","data":"\x"}`,
		`{"type":"a","data":"\u12"}`,
		"{\"type\":\"a\",\"data\":\"tab\there\"}",
		`{"type":"a",}`,
		`{"type":"a"} x`,
		`{"type":"a"`,
		`{"type":"a","data":{"k":1,}}`,
		`{"type":"a","data":tru}`,
		`[]`, `null`, `"order.paid"`, ``, ` `, `{}`, `{"type":""}`,
		`{"type":"a","data":` + deep(9999) + `}`,
		`{"type":"a","data":` + deep(10000) + `}`,
		deep(10000), deep(10001),
	}
	for _, c := range cases {
		sameAsReference(t, []byte(c))
	}
	// Every payload we have, and each of them cut short.
	files, err := filepath.Glob("../testdata/events/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no payloads: %v", err)
	}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sameAsReference(t, body)
		if _, err := polar.ParseEnvelope(body); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		for _, n := range []int{1, len(body) / 3, len(body) / 2, len(body) - 2} {
			sameAsReference(t, body[:n])
		}
	}
}

func TestParseEnvelopeTimestamp(t *testing.T) {
	env, err := polar.ParseEnvelope([]byte(`{"type":"order.paid","timestamp":"2026-11-20T10:15:09Z","data":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 11, 20, 10, 15, 9, 0, time.UTC); !env.Timestamp.Equal(want) || string(env.Data) != "{}" {
		t.Fatalf("got %v %q", env.Timestamp, env.Data)
	}
}

// FuzzParseEnvelope checks ParseEnvelope against encoding/json on arbitrary
// bodies.
func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte(`{"type":"order.paid","timestamp":"2026-11-20T10:15:09Z","data":{"id":"o","amount":-1.5e3}}`))
	f.Add([]byte(`{"Type":"a","TYPE":null,"data":[{"x":"\u00e9\n"}],"timestamp":null}`))
	f.Add([]byte(`[1,{"a":true}]`))
	f.Add([]byte("{\"type\":\"\xff\"}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		sameAsReference(t, body)
	})
}
