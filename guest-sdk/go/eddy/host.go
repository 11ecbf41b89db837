package eddy

import (
	"fmt"

	bs "wit_component/eddy_plugin_broadcast_state"
	"wit_component/eddy_plugin_clock"
	"wit_component/eddy_plugin_log"
	"wit_component/eddy_plugin_lookup"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// ---- broadcast state ---------------------------------------------------------------------

// BroadcastEvent is one event of a broadcast input.
type BroadcastEvent struct {
	Input       string
	Subject     string
	Headers     []Header
	Payload     []byte
	TimestampMs uint64
	Sequence    uint64
}

// Header returns the first header called name.
func (e *BroadcastEvent) Header(name string) (string, bool) { return findHeader(e.Headers, name) }

// JSON decodes the payload into v (see Unmarshal).
func (e *BroadcastEvent) JSON(v any) error { return Unmarshal(e.Payload, v) }

// BroadcastError is why a broadcast state call failed.
type BroadcastError struct{ msg string }

func (e *BroadcastError) Error() string { return e.msg }

func fromWitBroadcastError(e bs.BroadcastError) error {
	switch e.Tag() {
	case bs.BroadcastError_UnknownMap:
		return &BroadcastError{"broadcast map is not open"}
	case bs.BroadcastError_ReadOnly:
		return &BroadcastError{"broadcast state is read-only here: " + e.ReadOnly()}
	default:
		return &BroadcastError{"broadcast storage failed: " + e.Storage()}
	}
}

// BroadcastMap is a map shared by every key, written only from ProcessBroadcast; values JSON.
type BroadcastMap[K MapKey, V any] struct {
	name   string
	opened bool
	id     uint32
}

// NewBroadcastMap is a handle to the broadcast map called name.
func NewBroadcastMap[K MapKey, V any](name string) *BroadcastMap[K, V] {
	return &BroadcastMap[K, V]{name: name}
}

func (m *BroadcastMap[K, V]) open() (uint32, error) {
	if !m.opened {
		r := bs.OpenMap(m.name)
		if r.IsErr() {
			return 0, fromWitBroadcastError(r.Err())
		}
		m.id, m.opened = r.Ok(), true
	}
	return m.id, nil
}

// batchRead is one broadcast read kept for the rest of a keyed batch.
type batchRead struct {
	found bool
	data  []byte
}

type batchReadKey struct {
	id  uint32
	key string
}

// batchReads holds the broadcast reads of the keyed batch being handled: broadcast maps change
// only between keyed batches, so a key is asked of the host once per batch, as in the Rust SDK.
// Bytes are kept, not decoded values, so a plugin that changes a value it read cannot change
// the next event's.
var batchReads = map[batchReadKey]batchRead{}

func forgetBatchReads() {
	clear(batchReads)
}

func readBroadcast(id uint32, key []byte) (batchRead, error) {
	memo := batchReadKey{id, string(key)}
	if currentEvent >= 0 {
		if hit, ok := batchReads[memo]; ok {
			return hit, nil
		}
	}
	r := bs.Get(id, key)
	if r.IsErr() {
		return batchRead{}, fromWitBroadcastError(r.Err())
	}
	// The bytes are kept as the host wrote them: Go memory from cabi_realloc, which the
	// collector keeps while referenced (see imports.go). Decoding copies out of them.
	read := batchRead{found: !r.Ok().IsNone()}
	if read.found {
		read.data = r.Ok().Some()
	}
	if currentEvent >= 0 {
		batchReads[memo] = read
	}
	return read, nil
}

// Get returns the entry k and whether it exists.
func (m *BroadcastMap[K, V]) Get(k K) (V, bool, error) {
	var zero V
	id, err := m.open()
	if err != nil {
		return zero, false, err
	}
	read, err := readBroadcast(id, EncodeKey(k))
	if err != nil {
		return zero, false, err
	}
	if !read.found {
		return zero, false, nil
	}
	var v V
	if err := Unmarshal(read.data, &v); err != nil {
		return zero, false, &BroadcastError{fmt.Sprintf("cannot decode a value of broadcast map `%s`: %v", m.name, err)}
	}
	return v, true, nil
}

func bunit(r witTypes.Result[witTypes.Unit, bs.BroadcastError]) error {
	if r.IsErr() {
		return fromWitBroadcastError(r.Err())
	}
	return nil
}

// Put sets the entry k (only from ProcessBroadcast).
func (m *BroadcastMap[K, V]) Put(k K, v V) error {
	id, err := m.open()
	if err != nil {
		return err
	}
	b, err := Marshal(v)
	if err != nil {
		return &BroadcastError{fmt.Sprintf("cannot encode a value of broadcast map `%s`: %v", m.name, err)}
	}
	return bunit(bs.Put(id, EncodeKey(k), b))
}

// Remove removes the entry k (only from ProcessBroadcast).
func (m *BroadcastMap[K, V]) Remove(k K) error {
	id, err := m.open()
	if err != nil {
		return err
	}
	return bunit(bs.Remove(id, EncodeKey(k)))
}

// Clear removes every entry (only from ProcessBroadcast).
func (m *BroadcastMap[K, V]) Clear() error {
	id, err := m.open()
	if err != nil {
		return err
	}
	return bunit(bs.Clear(id))
}

// Entries returns up to limit entries in key order after startAfter (nil: from the first).
func (m *BroadcastMap[K, V]) Entries(startAfter *K, limit uint32) ([]Entry[K, V], error) {
	id, err := m.open()
	if err != nil {
		return nil, err
	}
	after := witTypes.None[[]uint8]()
	if startAfter != nil {
		after = witTypes.Some(EncodeKey(*startAfter))
	}
	r := bs.Entries(id, after, limit)
	if r.IsErr() {
		return nil, fromWitBroadcastError(r.Err())
	}
	return decodeEntries[K, V]("broadcast map", m.name, r.Ok())
}

// ---- lookups -----------------------------------------------------------------------------

// LookupRequest is one lookup declared by PlanLookups.
type LookupRequest struct {
	Store, Key string
}

// LookupStore is a store the pipeline declares as [lookup.<name>].
type LookupStore string

// Request is a LookupRequest of key in this store, for PlanLookups.
func (s LookupStore) Request(key string) LookupRequest { return LookupRequest{string(s), key} }

// Get returns the raw value of key and whether the store has it.
func (s LookupStore) Get(key string) ([]byte, bool, error) {
	r := eddy_plugin_lookup.Get(string(s), key)
	if r.IsErr() {
		e := r.Err()
		if e.Tag() == eddy_plugin_lookup.LookupError_UnknownStore {
			return nil, false, fmt.Errorf("unknown lookup store: %s", e.UnknownStore())
		}
		return nil, false, fmt.Errorf("lookup failed: %s", e.Failed())
	}
	if r.Ok().IsNone() {
		return nil, false, nil
	}
	return r.Ok().Some(), true, nil
}

// GetJSON decodes the value of key into v; false if the store has no such key.
func (s LookupStore) GetJSON(key string, v any) (bool, error) {
	b, found, err := s.Get(key)
	if err != nil || !found {
		return false, err
	}
	if err := Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("value of `%s` in store `%s` is not the JSON expected: %v", key, string(s), err)
	}
	return true, nil
}

// ---- log and clock -----------------------------------------------------------------------

func logf(level eddy_plugin_log.Level, format string, args []any) {
	eddy_plugin_log.Log(level, fmt.Sprintf(format, args...))
}

// Tracef and the others write into the host's log, tagged with the pipeline and plugin.
func Tracef(format string, args ...any) { logf(eddy_plugin_log.Level_Trace, format, args) }
func Debugf(format string, args ...any) { logf(eddy_plugin_log.Level_Debug, format, args) }
func Infof(format string, args ...any)  { logf(eddy_plugin_log.Level_Info, format, args) }
func Warnf(format string, args ...any)  { logf(eddy_plugin_log.Level_Warn, format, args) }
func Errorf(format string, args ...any) { logf(eddy_plugin_log.Level_Error, format, args) }

// NowMs is the host's processing-time clock (the one that times state TTL), in milliseconds.
func NowMs() uint64 { return eddy_plugin_clock.NowMs() }
