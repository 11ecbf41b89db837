package eddy

// Keyed state a batch at a time, as the Rust SDK's state/batch.rs does it.
//
// Value and list state of a `batchable` state cross to the host once per state and batch: the
// first read of a state fetches its values for every distinct key of the batch
// (value-get-batch, list-get-batch: the values packed in one buffer), writes are appended to
// one buffer here, in order, and change what later reads of the batch see, and finishBatch
// hands them over in one write-batch when the batch's events are done. A list appended to
// before it was read keeps the appended elements until the fetch gives the ones before them.
// A state that the previous batch read for fewer than a quarter of its events is read one key
// at a time. Values are spans of a fetched buffer (which the bindings keep alive until the
// export returns) or of the written one, so nothing is copied per read.
//
// The batch calls go through the generated bindings: they pin their buffers per call, which
// costs microseconds, but once per batch rather than per read and write.

import (
	"fmt"

	ks "wit_component/eddy_plugin_keyed_state"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// written marks a span of the batch's written buffer.
const written = -1

type span struct {
	buf        int
	start, end uint32
}

type valueSlot struct {
	known, present bool
	value          span
}

type listSlot struct {
	known bool
	items []span // before the first read: the elements appended in this batch
}

type stateTable struct {
	reads  int
	direct bool // out of the batch for the rest of it (after a write with its own TTL)
	values []valueSlot
	lists  []listSlot
}

var batch struct {
	haveSlots bool
	slots     []uint32 // the key slot of each event
	count     int      // distinct keys
	tables    []*stateTable // by state id (small integers, handed out in order); nil: untouched
	fetched   [][]byte
	writes    []ks.StateWrite
	bytes     []byte
	ends      []uint32
	// handedBytes and handedEnds: what a hand-over in the middle of the batch took already.
	handedBytes, handedEnds int
}

// sparse holds, per state id, whether the last batch that read it read it for few events.
// Slices by id rather than maps: a map lookup per state read and write cost a Go plugin
// more than the slot it found.
var sparse []bool

// isSparse reports whether the last batch that read state id read it for few events.
func isSparse(id uint32) bool {
	return int(id) < len(sparse) && sparse[id]
}

// forgetBatch forgets the batch, remembering which states it read sparsely.
func forgetBatch() {
	events := len(batch.slots)
	for id, t := range batch.tables {
		if t != nil && t.reads > 0 {
			sparse = reaching(sparse, id)
			sparse[id] = t.reads*4 < events
		}
	}
	batch.haveSlots = false
	batch.slots = nil
	batch.count = 0
	clear(batch.tables)
	batch.fetched = batch.fetched[:0]
	batch.writes = batch.writes[:0]
	batch.bytes = batch.bytes[:0]
	batch.ends = batch.ends[:0]
	batch.handedBytes, batch.handedEnds = 0, 0
}

func batchSlot(ev uint32) (int, error) {
	if !batch.haveSlots {
		batch.slots = ks.KeySlots()
		batch.haveSlots = true
		batch.count = 0
		for _, s := range batch.slots {
			if int(s)+1 > batch.count {
				batch.count = int(s) + 1
			}
		}
	}
	if int(ev) >= len(batch.slots) {
		return 0, ErrNoSuchEvent
	}
	return int(batch.slots[ev]), nil
}

// reaching is s, grown with zero values if it has no index id.
func reaching[T any](s []T, id int) []T {
	for len(s) <= id {
		var zero T
		s = append(s, zero)
	}
	return s
}

func tableOf(id uint32, list bool) *stateTable {
	batch.tables = reaching(batch.tables, int(id))
	t := batch.tables[id]
	if t == nil {
		t = &stateTable{}
		batch.tables[id] = t
	}
	if list && t.lists == nil {
		t.lists = make([]listSlot, batch.count)
	}
	if !list && t.values == nil {
		t.values = make([]valueSlot, batch.count)
	}
	return t
}

func spanBytes(s span) []byte {
	if s.buf == written {
		return batch.bytes[s.start:s.end]
	}
	return batch.fetched[s.buf][s.start:s.end]
}

func shortAnswer(got, keys int) error {
	return stateErr("state storage failed: the host answered a batch read with %d entries for the batch's %d keys", got, keys)
}

// unpack keeps a fetched buffer and returns the spans of its values.
func unpack(p ks.PackedValues) ([]span, error) {
	buf := len(batch.fetched)
	batch.fetched = append(batch.fetched, p.Bytes)
	out := make([]span, len(p.Ends))
	start := uint32(0)
	for i, end := range p.Ends {
		if end < start || int(end) > len(p.Bytes) {
			return nil, stateErr("state storage failed: a batch read's value ends at %d, outside its range (from %d in %d bytes)", end, start, len(p.Bytes))
		}
		out[i] = span{buf, start, end}
		start = end
	}
	return out, nil
}

// fetchedSpan keeps one value the host answered with.
func fetchedSpan(b []byte) span {
	batch.fetched = append(batch.fetched, b)
	return span{len(batch.fetched) - 1, 0, uint32(len(b))}
}

// batchValue is the current key's value of state id: its bytes and whether there is one.
func batchValue(id, ev uint32) ([]byte, bool, error) {
	slot, err := batchSlot(ev)
	if err != nil {
		return nil, false, err
	}
	t := tableOf(id, false)
	t.reads++
	v := &t.values[slot]
	if !v.known && isSparse(id) {
		b, found, err := hostValueGet(id, ev)
		if err != nil {
			return nil, false, err
		}
		*v = valueSlot{known: true, present: found}
		if found {
			v.value = fetchedSpan(b)
		}
	} else if !v.known {
		r := ks.ValueGetBatch(id)
		if r.IsErr() {
			return nil, false, fromWitStateError(r.Err())
		}
		present, packed := r.Ok().F0, r.Ok().F1
		if len(present) != batch.count {
			return nil, false, shortAnswer(len(present), batch.count)
		}
		spans, err := unpack(packed)
		if err != nil {
			return nil, false, err
		}
		next := 0
		for i, has := range present {
			var s span
			if has {
				if next >= len(spans) {
					return nil, false, shortAnswer(next, batch.count)
				}
				s = spans[next]
				next++
			}
			if !t.values[i].known {
				t.values[i] = valueSlot{known: true, present: has, value: s}
			}
		}
	}
	if !v.present {
		return nil, false, nil
	}
	return spanBytes(v.value), true, nil
}

// batchList is the current key's list of state id.
func batchList(id, ev uint32) (*listSlot, error) {
	slot, err := batchSlot(ev)
	if err != nil {
		return nil, err
	}
	t := tableOf(id, true)
	t.reads++
	l := &t.lists[slot]
	if !l.known && isSparse(id) {
		elems, err := hostListGet(id, ev)
		if err != nil {
			return nil, err
		}
		items := make([]span, 0, len(elems)+len(l.items))
		for _, b := range elems {
			items = append(items, fetchedSpan(b))
		}
		*l = listSlot{known: true, items: append(items, l.items...)}
	} else if !l.known {
		r := ks.ListGetBatch(id)
		if r.IsErr() {
			return nil, fromWitStateError(r.Err())
		}
		counts, packed := r.Ok().F0, r.Ok().F1
		if len(counts) != batch.count {
			return nil, shortAnswer(len(counts), batch.count)
		}
		spans, err := unpack(packed)
		if err != nil {
			return nil, err
		}
		next := 0
		for i, c := range counts {
			n := int(c)
			if next+n > len(spans) {
				return nil, shortAnswer(next, len(spans))
			}
			if k := &t.lists[i]; !k.known {
				items := make([]span, 0, n+len(k.items))
				items = append(items, spans[next:next+n]...)
				*k = listSlot{known: true, items: append(items, k.items...)}
			}
			next += n
		}
	}
	return l, nil
}

// batchWrite logs a write of change to state id for the current key: its values are encoded
// one after another in buf, value i ending at ends[i].
func batchWrite(id, ev uint32, change ks.ChangeKind, buf []byte, ends []int) error {
	slot, err := batchSlot(ev)
	if err != nil {
		return err
	}
	base := uint32(len(batch.bytes))
	batch.bytes = append(batch.bytes, buf...)
	spans := make([]span, len(ends))
	start := 0
	for i, end := range ends {
		spans[i] = span{written, base + uint32(start), base + uint32(end)}
		batch.ends = append(batch.ends, base+uint32(end))
		start = end
	}
	switch change {
	case ks.ChangeKind_ValueSet, ks.ChangeKind_ValueSetWithTtl, ks.ChangeKind_ValueClear:
		v := valueSlot{known: true, present: len(spans) > 0}
		if v.present {
			v.value = spans[0]
		}
		tableOf(id, false).values[slot] = v
	default:
		l := &tableOf(id, true).lists[slot]
		if change != ks.ChangeKind_ListAddAll {
			*l = listSlot{known: true}
		}
		l.items = append(l.items, spans...)
	}
	// A write with its own TTL is never logged: it takes its state out of the batch (goDirect).
	batch.writes = append(batch.writes, ks.StateWrite{State: id, Event: ev, Change: change, TtlMs: witTypes.None[uint64](), Values: uint32(len(spans))})
	return nil
}

// handOver hands the writes logged since the last hand-over to the host; the batch keeps the
// values (later reads of the batch still see them). A write the host refuses panics, which
// traps the call: the host re-runs its events one at a time, where the refusal meets its
// event.
func handOver() {
	if len(batch.writes) > 0 {
		from := uint32(batch.handedBytes)
		ends := make([]uint32, len(batch.ends)-batch.handedEnds)
		for i, e := range batch.ends[batch.handedEnds:] {
			ends[i] = e - from
		}
		r := ks.WriteBatch(batch.writes, ks.PackedValues{Bytes: batch.bytes[from:], Ends: ends})
		if r.IsErr() {
			e := r.Err()
			panic(fmt.Sprintf("eddy: the host refused the state write %d of the batch: %v", e.F0, fromWitStateError(e.F1)))
		}
	}
	batch.writes = batch.writes[:0]
	batch.handedBytes, batch.handedEnds = len(batch.bytes), len(batch.ends)
}

// finishBatch hands the batch's writes to the host and forgets the batch.
func finishBatch() {
	handOver()
	forgetBatch()
}

// goDirect takes state id out of the batch for the rest of it, handing over what the batch
// logged so far first: for a write with its own time-to-live, whose expiry the host decides
// and later reads of the batch must see.
func goDirect(id, ev uint32) error {
	if _, err := batchSlot(ev); err != nil {
		return err
	}
	tableOf(id, false).direct = true
	handOver()
	return nil
}

// batched reports whether s's value and list calls go through the batch.
func (s *slot) batched(id uint32) (bool, error) {
	if s.batch == 0 {
		r := ks.Batchable(id)
		if r.IsErr() {
			return false, fromWitStateError(r.Err())
		}
		s.batch = 2
		if r.Ok() {
			s.batch = 1
		}
	}
	if int(id) < len(batch.tables) && batch.tables[id] != nil && batch.tables[id].direct {
		return false, nil
	}
	return s.batch == 1, nil
}
