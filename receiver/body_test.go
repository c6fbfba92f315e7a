package receiver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"testing/iotest"

	"github.com/prometheus/client_golang/prometheus"
)

func testBudget(max int64) *unverifiedBudget {
	return &unverifiedBudget{max: max, requests: prometheus.NewGauge(prometheus.GaugeOpts{Name: "r"}), bytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "b"})}
}

// TestReadBodyReadsWhatWasSent reads bodies around every size boundary,
// announced or not, in reads of one byte or many: the bytes come back
// exactly, a body over the limit is an *http.MaxBytesError, and the lease
// holds no more than the share or three times the body's length (a buffer
// doubled to under twice it, and the one it was copied from), one and a half
// for the largest.
func TestReadBodyReadsWhatWasSent(t *testing.T) {
	const maxBytes = 1 << 20
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	}
	for _, size := range []int{0, 1, 2700, firstChunk - 1, firstChunk, firstChunk + 1, exactBodyMax, exactBodyMax + 1, 100_000, maxBytes - 1, maxBytes, maxBytes + 1} {
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		for name, wrap := range readers {
			if name == "one byte" && size > 100_000 {
				continue // slow, and nothing new
			}
			for _, announced := range []bool{true, false} {
				t.Run(fmt.Sprintf("%d/%s/announced=%v", size, name, announced), func(t *testing.T) {
					contentLength := int64(-1)
					if announced {
						contentLength = int64(size)
					}
					b := testBudget(64 << 20)
					lease, ok := b.admit()
					if !ok {
						t.Fatal("not admitted")
					}
					got, err := readBody(http.MaxBytesReader(nil, io.NopCloser(wrap(bytes.NewReader(body))), maxBytes), contentLength, maxBytes, &lease)
					if size > maxBytes {
						if _, ok := errors.AsType[*http.MaxBytesError](err); !ok {
							t.Fatalf("a body over the limit: %v, want *http.MaxBytesError", err)
						}
						return
					}
					if err != nil || !bytes.Equal(got, body) {
						t.Fatalf("read %d bytes (%v), want the %d sent", len(got), err, size)
					}
					if limit := max(unverifiedShare, min(3*int64(size), maxBytes*3/2)); lease.held > limit {
						t.Errorf("the lease holds %d bytes for a body of %d, want at most %d", lease.held, size, limit)
					}
					lease.release()
					if requests, used := b.usage(); requests != 0 || used != 0 {
						t.Errorf("after release the budget holds %d requests, %d bytes", requests, used)
					}
				})
			}
		}
	}
}

// TestReadBodyStopsAtTheBudget: a body that would grow past the budget is
// refused, and the lease keeps what it had until it is released.
func TestReadBodyStopsAtTheBudget(t *testing.T) {
	b := testBudget(256 << 10)
	lease, ok := b.admit()
	if !ok {
		t.Fatal("not admitted")
	}
	body := make([]byte, 200<<10)
	if _, err := readBody(bytes.NewReader(body), -1, 1<<20, &lease); !errors.Is(err, errOverBudget) {
		t.Fatalf("a body growing past the budget: %v, want errOverBudget", err)
	}
	if _, used := b.usage(); used > b.max {
		t.Fatalf("the budget holds %d bytes, more than its %d", used, b.max)
	}
	lease.release()
	lease.release() // again: nothing
	if requests, used := b.usage(); requests != 0 || used != 0 {
		t.Fatalf("after release the budget holds %d requests, %d bytes", requests, used)
	}
}
