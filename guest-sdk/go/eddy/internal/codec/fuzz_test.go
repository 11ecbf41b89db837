package codec

// Fuzz targets (Go's native fuzzing) for the decoders a Go plugin runs on bytes it does not
// control: event payloads and state values (the JSON codec) and map keys read back from the
// host. Run by scripts/dev/fuzz.sh (go_json, go_map_keys) through `scripts/guests/go.sh fuzz`;
// inputs that failed are kept under testdata/fuzz/ and run by `go test` as regression cases.

import (
	"bytes"
	"encoding/binary"
	"testing"
	"unicode/utf8"
)

// For any bytes: the fast paths decode what the general path decodes (same value, same error
// text), and what the general path accepts into a struct, Marshal writes back as JSON that
// decodes to the same value.
func FuzzJSON(f *testing.F) {
	f.Add([]byte(`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1700000000000}`))
	f.Add([]byte(`{"name":"n","count":-5,"limit":null,"label":"l","recent":[1,2],"tags":["a"],"info":{"k":1},"NoTag":3}`))
	f.Add([]byte(`["tx-1","c-42",1250,1]`))
	for _, v := range values {
		f.Add([]byte(v))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAll(t, data)
		roundTrip[tx](t, data)
		roundTrip[mixed](t, data)
		roundTrip[uint64](t, data)
		roundTrip[string](t, data)
	})
}

func roundTrip[T any](t *testing.T, data []byte) {
	t.Helper()
	var v T
	if Unmarshal(data, &v) != nil {
		return
	}
	out, err := Marshal(v)
	if err != nil {
		t.Fatalf("%T %q decoded to %+v, which does not encode: %v", v, data, v, err)
	}
	var back T
	if err := Unmarshal(out, &back); err != nil {
		t.Fatalf("%T %q: written as %q, which does not decode: %v", v, data, out, err)
	}
	// Invalid UTF-8 in a string decodes to U+FFFD, so compare what was written twice.
	again, _ := Marshal(back)
	if !bytes.Equal(out, again) {
		t.Fatalf("%T %q: written as %q, then as %q", v, data, out, again)
	}
}

// For any bytes, each key type: decoding gives a key or an error, never a panic; a key that
// decodes encodes back to the same bytes; fixed-width keys decode to the number their bytes
// order by (byte order is numeric order).
func FuzzMapKeys(f *testing.F) {
	f.Add([]byte{}, []byte{0, 0, 0, 1})
	f.Add([]byte{0x80, 0, 0, 0}, []byte{0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte("c-42"), []byte("c-7"))
	f.Add([]byte{0xff, 0xfe}, []byte{0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		keyRoundTrip[string](t, a)
		keyRoundTrip[[]byte](t, a)
		keyRoundTrip[uint32](t, a)
		keyRoundTrip[uint64](t, a)
		keyRoundTrip[int32](t, a)
		keyRoundTrip[int64](t, a)
		if s, err := DecodeKey[string](a); (err == nil) != utf8.Valid(a) || (err == nil && s != string(a)) {
			t.Fatalf("string key %q: %q, %v", a, s, err)
		}
		order := bytes.Compare(a, b)
		if len(a) == 4 && len(b) == 4 {
			ordered[uint32](t, a, b, order)
			ordered[int32](t, a, b, order)
			if x, _ := DecodeKey[uint32](a); x != binary.BigEndian.Uint32(a) {
				t.Fatalf("u32 key %x read as %d", a, x)
			}
		}
		if len(a) == 8 && len(b) == 8 {
			ordered[uint64](t, a, b, order)
			ordered[int64](t, a, b, order)
		}
	})
}

func keyRoundTrip[K MapKey](t *testing.T, b []byte) {
	t.Helper()
	k, err := DecodeKey[K](b)
	if err != nil {
		if err.Error() == "" {
			t.Fatalf("%T key %x refused without a reason", k, b)
		}
		return
	}
	if back := EncodeKey(k); !bytes.Equal(back, b) {
		t.Fatalf("%T key %x decoded to %v, encoded back as %x", k, b, k, back)
	}
}

func ordered[K uint32 | uint64 | int32 | int64](t *testing.T, a, b []byte, order int) {
	t.Helper()
	x, errA := DecodeKey[K](a)
	y, errB := DecodeKey[K](b)
	if errA != nil || errB != nil {
		t.Fatalf("%T keys %x, %x refused: %v, %v", x, a, b, errA, errB)
	}
	numeric := 0
	if x < y {
		numeric = -1
	} else if x > y {
		numeric = 1
	}
	if numeric != order {
		t.Fatalf("%T keys %x (%d) and %x (%d): bytes order %d, numbers %d", x, a, x, b, y, order, numeric)
	}
}
