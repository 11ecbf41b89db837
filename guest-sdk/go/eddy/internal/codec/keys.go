package codec

// Map-key encodings, shared by every language's layer, so that keys written by one are read by
// another and byte order is the keys' natural order.

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"unicode/utf8"
)

// MapKey is a type usable as a map key. Encodings are shared by every language: strings as
// their UTF-8 bytes, byte slices as they are, uint32/uint64 big-endian, int32/int64 big-endian
// with the sign bit flipped, so byte order is the natural order.
type MapKey interface {
	~string | ~[]byte | ~uint32 | ~uint64 | ~int32 | ~int64
}

// EncodeKey returns the bytes of a map key.
func EncodeKey[K MapKey](k K) []byte {
	v := reflect.ValueOf(k)
	switch v.Kind() {
	case reflect.String:
		return []byte(v.String())
	case reflect.Slice:
		return append([]byte(nil), v.Bytes()...)
	case reflect.Uint32:
		return binary.BigEndian.AppendUint32(nil, uint32(v.Uint()))
	case reflect.Uint64:
		return binary.BigEndian.AppendUint64(nil, v.Uint())
	case reflect.Int32:
		return binary.BigEndian.AppendUint32(nil, uint32(int32(v.Int()))^(1<<31))
	default:
		return binary.BigEndian.AppendUint64(nil, uint64(v.Int())^(1<<63))
	}
}

// DecodeKey reads a map key from its bytes.
func DecodeKey[K MapKey](b []byte) (K, error) {
	var k K
	v := reflect.ValueOf(&k).Elem()
	fixed := func(n int, name string) error {
		if len(b) != n {
			return fmt.Errorf("a %s key is %d bytes, this one is %d", name, n, len(b))
		}
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		if !utf8.Valid(b) {
			return k, fmt.Errorf("key is not UTF-8")
		}
		v.SetString(string(b))
	case reflect.Slice:
		v.SetBytes(append([]byte(nil), b...))
	case reflect.Uint32:
		if err := fixed(4, "u32"); err != nil {
			return k, err
		}
		v.SetUint(uint64(binary.BigEndian.Uint32(b)))
	case reflect.Uint64:
		if err := fixed(8, "u64"); err != nil {
			return k, err
		}
		v.SetUint(binary.BigEndian.Uint64(b))
	case reflect.Int32:
		if err := fixed(4, "i32"); err != nil {
			return k, err
		}
		v.SetInt(int64(int32(binary.BigEndian.Uint32(b) ^ (1 << 31))))
	default:
		if err := fixed(8, "i64"); err != nil {
			return k, err
		}
		v.SetInt(int64(binary.BigEndian.Uint64(b) ^ (1 << 63)))
	}
	return k, nil
}
