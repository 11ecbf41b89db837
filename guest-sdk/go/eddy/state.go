package eddy

import (
	"fmt"

	"wit_component/eddy/internal/codec"
	ks "wit_component/eddy_plugin_keyed_state"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// StateError is why a state operation failed; its message is worded like the Rust SDK's.
type StateError struct {
	msg string
}

func (e *StateError) Error() string { return e.msg }

func stateErr(format string, args ...any) error {
	return &StateError{fmt.Sprintf(format, args...)}
}

// ErrNoSuchEvent is returned by keyed state calls made outside Process.
var ErrNoSuchEvent error = &StateError{"no event is being processed: keyed state is only reachable from `Process`"}

func fromWitStateError(e ks.StateError) error {
	switch e.Tag() {
	case ks.StateError_UnknownState:
		return &StateError{"state is not open in this plugin instance"}
	case ks.StateError_WrongKind:
		return stateErr("state exists with another kind: %s", e.WrongKind())
	case ks.StateError_NoSuchEvent:
		return ErrNoSuchEvent
	case ks.StateError_ReadOnly:
		return stateErr("state is read-only here: %s", e.ReadOnly())
	default:
		return stateErr("state storage failed: %s", e.Storage())
	}
}

// TTL is the time-to-live of a state's entries (Flink StateTtlConfig): an entry expires TTLMs
// after its last write (or read too, with UpdateOnRead); ReturnExpired lets an expired entry
// that is not cleaned up yet be read once.
type TTL struct {
	Ms            uint64
	UpdateOnRead  bool
	ReturnExpired bool
}

// slot is the untyped part of a state handle: opened in the host on first use.
type slot struct {
	name   string
	kind   ks.StateKind
	ttl    *TTL
	opened bool
	id     uint32
	// batch: whether value and list calls go through the batch (batch.go): 0 not asked yet,
	// 1 yes, 2 no.
	batch uint8
}

func (s *slot) open() (uint32, error) {
	if s.opened {
		return s.id, nil
	}
	ttl := witTypes.None[ks.TtlConfig]()
	if s.ttl != nil {
		c := ks.TtlConfig{TtlMs: s.ttl.Ms, Update: ks.TtlUpdate_OnCreateAndWrite, Visibility: ks.TtlVisibility_NeverReturnExpired}
		if s.ttl.UpdateOnRead {
			c.Update = ks.TtlUpdate_OnReadAndWrite
		}
		if s.ttl.ReturnExpired {
			c.Visibility = ks.TtlVisibility_ReturnExpiredIfNotCleanedUp
		}
		ttl = witTypes.Some(c)
	}
	r := ks.Open(s.name, s.kind, ttl)
	if r.IsErr() {
		return 0, fromWitStateError(r.Err())
	}
	s.id, s.opened = r.Ok(), true
	return s.id, nil
}

func (s *slot) target() (uint32, uint32, error) {
	if currentEvent < 0 {
		return 0, 0, ErrNoSuchEvent
	}
	id, err := s.open()
	return id, uint32(currentEvent), err
}

func (s *slot) encode(v any) ([]byte, error) {
	return s.appendEncoded(nil, v)
}

// appendEncoded appends the encoding of v to buf.
func (s *slot) appendEncoded(buf []byte, v any) ([]byte, error) {
	b, err := codec.Append(buf, v)
	if err != nil {
		return nil, stateErr("cannot encode a value of state `%s`: %v", s.name, err)
	}
	return b, nil
}

// orWrite returns err if there is one, else logs the write in the batch.
func orWrite(err error, id, ev uint32, change ks.ChangeKind, buf []byte, ends []int) error {
	if err != nil {
		return err
	}
	return batchWrite(id, ev, change, buf, ends)
}

func decodeAs[T any](name string, b []byte) (T, error) {
	var v T
	if err := Unmarshal(b, &v); err != nil {
		return v, stateErr("cannot decode a value of state `%s`: %v", name, err)
	}
	return v, nil
}

func unit(r witTypes.Result[witTypes.Unit, ks.StateError]) error {
	if r.IsErr() {
		return fromWitStateError(r.Err())
	}
	return nil
}

// Open opens the state now rather than on first use, to fail Init early when the name exists
// with another kind.
func (s *slot) Open() error {
	_, err := s.open()
	return err
}

// Name is the state's name.
func (s *slot) Name() string { return s.name }

// VisitAllKeys asks the host to visit every entry of the state (only from ProcessBroadcast or
// Migrate); the entries go to the plugin's Visit with tag.
func (s *slot) VisitAllKeys(tag string) error {
	id, err := s.open()
	if err != nil {
		return err
	}
	return unit(ks.VisitAllKeys(id, tag))
}

func newSlot(name string, kind ks.StateKind, ttl []TTL) slot {
	s := slot{name: name, kind: kind}
	if len(ttl) > 0 {
		t := ttl[0]
		s.ttl = &t
	}
	return s
}

// ---- value state -------------------------------------------------------------------------

// ValueState holds one T per key, stored as JSON.
type ValueState[T any] struct{ slot }

// NewValueState is a handle to the value state called name, optionally with a TTL.
func NewValueState[T any](name string, ttl ...TTL) *ValueState[T] {
	return &ValueState[T]{newSlot(name, ks.StateKind_Value, ttl)}
}

// Get returns the current key's value and whether there is one.
func (s *ValueState[T]) Get() (T, bool, error) {
	var zero T
	id, ev, err := s.target()
	if err != nil {
		return zero, false, err
	}
	batched, err := s.batched(id)
	if err != nil {
		return zero, false, err
	}
	var b []byte
	var found bool
	if batched {
		b, found, err = batchValue(id, ev)
	} else {
		b, found, err = hostValueGet(id, ev)
	}
	if err != nil || !found {
		return zero, false, err
	}
	v, err := decodeAs[T](s.name, b)
	return v, err == nil, err
}

// Set sets the current key's value.
func (s *ValueState[T]) Set(v T) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	b, err := s.encode(v)
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil || batched {
		return orWrite(err, id, ev, ks.ChangeKind_ValueSet, b, []int{len(b)})
	}
	return hostValueSet(id, ev, b, nil)
}

// SetWithTTL sets the value with its own time-to-live.
func (s *ValueState[T]) SetWithTTL(v T, ttlMs uint64) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	b, err := s.encode(v)
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil {
		return err
	} else if batched {
		if err := goDirect(id, ev); err != nil {
			return err
		}
	}
	return hostValueSet(id, ev, b, &ttlMs)
}

// Clear removes the current key's value.
func (s *ValueState[T]) Clear() error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil || batched {
		return orWrite(err, id, ev, ks.ChangeKind_ValueClear, nil, nil)
	}
	return unit(ks.ValueClear(id, ev))
}

// ---- map keys ----------------------------------------------------------------------------

// MapKey is a type usable as a map key. Encodings are shared by every language: strings as
// their UTF-8 bytes, byte slices as they are, uint32/uint64 big-endian, int32/int64 big-endian
// with the sign bit flipped, so byte order is the natural order.
type MapKey = codec.MapKey

// EncodeKey returns the bytes of a map key.
func EncodeKey[K MapKey](k K) []byte { return codec.EncodeKey(k) }

// DecodeKey reads a map key from its bytes.
func DecodeKey[K MapKey](b []byte) (K, error) { return codec.DecodeKey[K](b) }

// Entry is one map entry.
type Entry[K MapKey, V any] struct {
	Key   K
	Value V
}

func decodeEntries[K MapKey, V any](kind, name string, raw []witTypes.Tuple2[[]uint8, []uint8]) ([]Entry[K, V], error) {
	out := make([]Entry[K, V], 0, len(raw))
	for _, e := range raw {
		k, err := DecodeKey[K](e.F0)
		if err != nil {
			return out, stateErr("cannot decode a key of %s `%s`: %v", kind, name, err)
		}
		v, err := decodeAs[V](name, e.F1)
		if err != nil {
			return out, err
		}
		out = append(out, Entry[K, V]{k, v})
	}
	return out, nil
}

// ---- map state ---------------------------------------------------------------------------

// MapState holds entries K -> V per key, ordered by the key's bytes; values are JSON.
type MapState[K MapKey, V any] struct{ slot }

// NewMapState is a handle to the map state called name, optionally with a TTL.
func NewMapState[K MapKey, V any](name string, ttl ...TTL) *MapState[K, V] {
	return &MapState[K, V]{newSlot(name, ks.StateKind_Map, ttl)}
}

// Get returns the entry k and whether it exists.
func (s *MapState[K, V]) Get(k K) (V, bool, error) {
	var zero V
	id, ev, err := s.target()
	if err != nil {
		return zero, false, err
	}
	r := ks.MapGet(id, ev, EncodeKey(k))
	if r.IsErr() {
		return zero, false, fromWitStateError(r.Err())
	}
	if r.Ok().IsNone() {
		return zero, false, nil
	}
	v, err := decodeAs[V](s.name, r.Ok().Some())
	return v, err == nil, err
}

// Put sets the entry k.
func (s *MapState[K, V]) Put(k K, v V) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	b, err := s.encode(v)
	if err != nil {
		return err
	}
	return hostMapPut(id, ev, EncodeKey(k), b, nil)
}

// PutWithTTL sets the entry k with its own time-to-live.
func (s *MapState[K, V]) PutWithTTL(k K, v V, ttlMs uint64) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	b, err := s.encode(v)
	if err != nil {
		return err
	}
	return hostMapPut(id, ev, EncodeKey(k), b, &ttlMs)
}

// Remove removes the entry k (no error if absent).
func (s *MapState[K, V]) Remove(k K) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	return unit(ks.MapRemove(id, ev, EncodeKey(k)))
}

// Contains tells whether the entry k exists (a read, for TTL).
func (s *MapState[K, V]) Contains(k K) (bool, error) {
	id, ev, err := s.target()
	if err != nil {
		return false, err
	}
	r := ks.MapContains(id, ev, EncodeKey(k))
	if r.IsErr() {
		return false, fromWitStateError(r.Err())
	}
	return r.Ok(), nil
}

// Entries returns up to limit entries in key order after startAfter (nil: from the first).
func (s *MapState[K, V]) Entries(startAfter *K, limit uint32) ([]Entry[K, V], error) {
	id, ev, err := s.target()
	if err != nil {
		return nil, err
	}
	after := witTypes.None[[]uint8]()
	if startAfter != nil {
		after = witTypes.Some(EncodeKey(*startAfter))
	}
	r := ks.MapEntries(id, ev, after, limit)
	if r.IsErr() {
		return nil, fromWitStateError(r.Err())
	}
	return decodeEntries[K, V]("state", s.name, r.Ok())
}

// IsEmpty tells whether the current key has no entries.
func (s *MapState[K, V]) IsEmpty() (bool, error) {
	id, ev, err := s.target()
	if err != nil {
		return false, err
	}
	r := ks.MapIsEmpty(id, ev)
	if r.IsErr() {
		return false, fromWitStateError(r.Err())
	}
	return r.Ok(), nil
}

// Clear removes every entry of the current key.
func (s *MapState[K, V]) Clear() error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	return unit(ks.MapClear(id, ev))
}

// ---- list state --------------------------------------------------------------------------

// ListState holds a list of T per key, oldest first; each element is JSON.
type ListState[T any] struct{ slot }

// NewListState is a handle to the list state called name, optionally with a TTL.
func NewListState[T any](name string, ttl ...TTL) *ListState[T] {
	return &ListState[T]{newSlot(name, ks.StateKind_List, ttl)}
}

// Get returns every element, oldest first.
func (s *ListState[T]) Get() ([]T, error) {
	id, ev, err := s.target()
	if err != nil {
		return nil, err
	}
	batched, err := s.batched(id)
	if err != nil {
		return nil, err
	}
	var elems [][]byte
	if batched {
		l, err := batchList(id, ev)
		if err != nil {
			return nil, err
		}
		elems = make([][]byte, len(l.items))
		for i, sp := range l.items {
			elems[i] = spanBytes(sp)
		}
	} else if elems, err = hostListGet(id, ev); err != nil {
		return nil, err
	}
	out := make([]T, 0, len(elems))
	for _, b := range elems {
		v, err := decodeAs[T](s.name, b)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// encodeAll encodes the elements one after another into one buffer (one allocation, not one
// per element), with where each ends.
func (s *ListState[T]) encodeAll(values []T) (buf []byte, ends []int, err error) {
	ends = make([]int, len(values))
	for i, v := range values {
		if buf, err = s.appendEncoded(buf, v); err != nil {
			return nil, nil, err
		}
		ends[i] = len(buf)
	}
	return buf, ends, nil
}

// Add appends one element.
func (s *ListState[T]) Add(v T) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	b, err := s.encode(v)
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil || batched {
		return orWrite(err, id, ev, ks.ChangeKind_ListAddAll, b, []int{len(b)})
	}
	return hostListAdd(id, ev, b)
}

// AddAll appends several elements.
func (s *ListState[T]) AddAll(values []T) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	buf, ends, err := s.encodeAll(values)
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil || batched {
		return orWrite(err, id, ev, ks.ChangeKind_ListAddAll, buf, ends)
	}
	return hostListValues(id, ev, buf, ends, false)
}

// Update replaces the whole list.
func (s *ListState[T]) Update(values []T) error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	buf, ends, err := s.encodeAll(values)
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil || batched {
		return orWrite(err, id, ev, ks.ChangeKind_ListUpdate, buf, ends)
	}
	return hostListValues(id, ev, buf, ends, true)
}

// Clear removes the list.
func (s *ListState[T]) Clear() error {
	id, ev, err := s.target()
	if err != nil {
		return err
	}
	if batched, err := s.batched(id); err != nil || batched {
		return orWrite(err, id, ev, ks.ChangeKind_ListClear, nil, nil)
	}
	return unit(ks.ListClear(id, ev))
}
