package eddy

// Keyed-state reads and writes called through the layer's own import declarations rather
// than the generated bindings. The bindings pin every argument buffer and a freshly allocated return
// area with a new runtime.Pinner per call; in this Go port that cost 7 µs for one value write
// and 11 µs for a list update of five elements (measured by cutting fraud-enrich short), more
// than everything else the plugin does per event. Pinning is not needed here: Go's heap does
// not move, nothing else runs while the host call does (the instance is single-threaded), and
// the host keeps no pointer after it returns. The buffers are kept alive across the call with
// runtime.KeepAlive, and the result is written to a package-level return area.
//
// The declarations mirror the canonical ABI's flattening of each function (the same as the
// generated ones); a signature change in wit/eddy.wit fails the component at link time.

import (
	"runtime"
	"unsafe"

	ks "wit_component/eddy_plugin_keyed_state"
)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 value-get
func importValueGet(state, event int32, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 list-get
func importListGet(state, event int32, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 value-set
func importValueSet(state, event int32, ptr uintptr, n uint32, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 value-set-with-ttl
func importValueSetWithTTL(state, event int32, ptr uintptr, n uint32, ttlMs int64, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 map-put
func importMapPut(state, event int32, kptr uintptr, kn uint32, ptr uintptr, n uint32, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 map-put-with-ttl
func importMapPutWithTTL(state, event int32, kptr uintptr, kn uint32, ptr uintptr, n uint32, ttlMs int64, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 list-add
func importListAdd(state, event int32, ptr uintptr, n uint32, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 list-add-all
func importListAddAll(state, event int32, ptr uintptr, n uint32, ret uintptr)

//go:wasmimport eddy:plugin/keyed-state@0.2.2 list-update
func importListUpdate(state, event int32, ptr uintptr, n uint32, ret uintptr)

// retArea receives a `result<_, state-error>`: the result's tag at 0, the error's case at 4,
// its message's pointer and length at 8 and 12; the results of reads lay out their value from 4.
// A global: its address never changes. What the host allocates for a result (through
// cabi_realloc) stays pinned by the bindings' runtime until the next export call, like the
// results of the generated functions.
var retArea [4]uint32

func retPtr() uintptr { return uintptr(unsafe.Pointer(&retArea)) }

func bytesPtr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// unitResult reads retArea after a call returning `result<_, state-error>`.
func unitResult() error {
	if uint8(retArea[0]) == 0 {
		return nil
	}
	return stateErrorResult()
}

// hostBytes is the memory the host wrote at ptr, n bytes, without a copy.
func hostBytes(ptr, n uint32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

// hostValueGet calls value-get: the value (nil and false when there is none).
func hostValueGet(state, event uint32) ([]byte, bool, error) {
	importValueGet(int32(state), int32(event), retPtr())
	if uint8(retArea[0]) != 0 {
		return nil, false, stateErrorResult()
	}
	if uint8(retArea[1]) == 0 {
		return nil, false, nil
	}
	return hostBytes(retArea[2], retArea[3]), true, nil
}

// hostListGet calls list-get: the elements, each in host-written memory.
func hostListGet(state, event uint32) ([][]byte, error) {
	importListGet(int32(state), int32(event), retPtr())
	if uint8(retArea[0]) != 0 {
		return nil, stateErrorResult()
	}
	pairs := unsafe.Slice((*uint32)(unsafe.Pointer(uintptr(retArea[1]))), 2*retArea[2])
	out := make([][]byte, retArea[2])
	for i := range out {
		out[i] = hostBytes(pairs[2*i], pairs[2*i+1])
	}
	return out, nil
}

// stateErrorResult is the state-error in retArea.
func stateErrorResult() error {
	msg := func() string {
		return unsafe.String((*byte)(unsafe.Pointer(uintptr(retArea[2]))), retArea[3])
	}
	var e ks.StateError
	switch uint8(retArea[1]) {
	case 0:
		e = ks.MakeStateErrorUnknownState()
	case 1:
		e = ks.MakeStateErrorWrongKind(msg())
	case 2:
		e = ks.MakeStateErrorNoSuchEvent()
	case 3:
		e = ks.MakeStateErrorReadOnly(msg())
	default:
		e = ks.MakeStateErrorStorage(msg())
	}
	return fromWitStateError(e)
}

func hostValueSet(state, event uint32, value []byte, ttlMs *uint64) error {
	if ttlMs != nil {
		importValueSetWithTTL(int32(state), int32(event), bytesPtr(value), uint32(len(value)), int64(*ttlMs), retPtr())
	} else {
		importValueSet(int32(state), int32(event), bytesPtr(value), uint32(len(value)), retPtr())
	}
	runtime.KeepAlive(value)
	return unitResult()
}

func hostMapPut(state, event uint32, key, value []byte, ttlMs *uint64) error {
	kp, kn, vp, vn := bytesPtr(key), uint32(len(key)), bytesPtr(value), uint32(len(value))
	if ttlMs != nil {
		importMapPutWithTTL(int32(state), int32(event), kp, kn, vp, vn, int64(*ttlMs), retPtr())
	} else {
		importMapPut(int32(state), int32(event), kp, kn, vp, vn, retPtr())
	}
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	return unitResult()
}

func hostListAdd(state, event uint32, value []byte) error {
	importListAdd(int32(state), int32(event), bytesPtr(value), uint32(len(value)), retPtr())
	runtime.KeepAlive(value)
	return unitResult()
}

// hostListValues calls list-add-all (replace false) or list-update (replace true) with the
// elements encoded one after another in buf, element i ending at ends[i], laid out as the
// canonical ABI's list<list<u8>>: a (pointer, length) pair each, pointing into buf.
func hostListValues(state, event uint32, buf []byte, ends []int, replace bool) error {
	base := uint32(bytesPtr(buf))
	pairs := make([]uint32, 2*len(ends))
	start := 0
	for i, end := range ends {
		pairs[2*i] = base + uint32(start)
		pairs[2*i+1] = uint32(end - start)
		start = end
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(pairs)))
	if replace {
		importListUpdate(int32(state), int32(event), p, uint32(len(ends)), retPtr())
	} else {
		importListAddAll(int32(state), int32(event), p, uint32(len(ends)), retPtr())
	}
	runtime.KeepAlive(pairs)
	runtime.KeepAlive(buf)
	return unitResult()
}
