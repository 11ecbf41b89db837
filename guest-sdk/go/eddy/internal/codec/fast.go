package codec

// Fast paths for the shapes plugins use on every event: flat structs of strings, integers,
// booleans, pointers to those, slices of those and json.RawMessage; and those types alone (a
// state value, a list element). encoding/json's reflection costs several times the work itself
// in a wasm guest (measured: docs/BENCHMARKS.md, guest languages). Every fast path either
// produces what the general path (serde.go) would, or declines (ok=false) and the general path
// runs, which is also where every error message comes from: a fast path never fails.

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

type kind uint8

const (
	kString kind = iota + 1
	kUint
	kInt
	kBool
	kRaw // json.RawMessage
)

// shape is how one value is read and written: a kind, behind a pointer or in a slice.
type shape struct {
	kind  kind
	bits  int  // of an integer kind
	ptr   bool // *T: null is nil
	slice bool // []T
}

type fastField struct {
	name      string
	index     int
	shape     shape
	required  bool // serde's rule: not a pointer, no omitempty
	omitEmpty bool
}

// plan is a struct type's fast path; ok is false when the type has a field or method the fast
// paths do not cover.
type plan struct {
	ok     bool
	fields []fastField
	// whole: the fields are every field of the struct and all plain scalars (no pointer,
	// slice or raw message), so a decode that read them all may store the struct at once.
	whole bool
	// scratch is where a decode lands before it is known to succeed, and scratchFields its
	// fields in the order of fields (reused: one thread). Each reflect.Value.Field costs a
	// Go guest more than reading the value does, so the fields are taken once.
	scratch       reflect.Value
	scratchFields []reflect.Value
	// enc is where an encode copies the value, for its fields (encFields) taken once too.
	enc       reflect.Value
	encFields []reflect.Value
}

// fieldsOf is the fields of struct value v in the order of p.fields.
func (p *plan) fieldsOf(v reflect.Value) []reflect.Value {
	fields := make([]reflect.Value, len(p.fields))
	for j, f := range p.fields {
		fields[j] = v.Field(f.index)
	}
	return fields
}

var (
	rawMessageType = reflect.TypeFor[json.RawMessage]()
	marshalerTypes = []reflect.Type{
		reflect.TypeFor[json.Marshaler](),
		reflect.TypeFor[json.Unmarshaler](),
		reflect.TypeFor[encoding.TextMarshaler](),
		reflect.TypeFor[encoding.TextUnmarshaler](),
		reflect.TypeFor[encoding.TextAppender](),
	}
	// The plans made so far (the layer runs on one thread).
	plans = map[reflect.Type]*plan{}
)

// custom reports whether t (or *t) decides its own JSON, which only encoding/json honours.
func custom(t reflect.Type) bool {
	for _, m := range marshalerTypes {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return true
		}
	}
	// json/v2's interfaces, by name (constant names keep the linker's dead code elimination).
	pt := reflect.PointerTo(t)
	_, to := t.MethodByName("MarshalJSONTo")
	_, ptrTo := pt.MethodByName("MarshalJSONTo")
	_, from := t.MethodByName("UnmarshalJSONFrom")
	_, ptrFrom := pt.MethodByName("UnmarshalJSONFrom")
	return to || ptrTo || from || ptrFrom
}

// scalar returns the kind of a plain string, integer or boolean type.
func scalar(t reflect.Type) (kind, int, bool) {
	if custom(t) {
		return 0, 0, false
	}
	switch t.Kind() {
	case reflect.String:
		return kString, 0, true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return kUint, t.Bits(), true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return kInt, t.Bits(), true
	case reflect.Bool:
		return kBool, 0, true
	}
	return 0, 0, false
}

// shapeOf returns how values of t are handled, if a fast path covers them.
func shapeOf(t reflect.Type) (shape, bool) {
	if t == rawMessageType {
		return shape{kind: kRaw}, true
	}
	s := shape{}
	switch t.Kind() {
	case reflect.Pointer:
		s.ptr, t = true, t.Elem()
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 || custom(t) {
			return s, false // []byte is base64 to encoding/json
		}
		s.slice, t = true, t.Elem()
	}
	k, bits, ok := scalar(t)
	s.kind, s.bits = k, bits
	return s, ok
}

// simpleName reports whether a member name is written and read as its bytes.
func simpleName(name string) bool {
	for i := 0; i < len(name); i++ {
		// encoding/json (json/v2 inside) also ends a tag's name at a quote or backquote.
		if c := name[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || c == '\'' || c == '`' {
			return false
		}
	}
	return name != ""
}

// recentPlans are the plans asked for last, looked through before the map: a map keyed by
// an interface hashes it at each lookup, and a Go plugin asks several times an event.
var (
	recentPlans [8]struct {
		t reflect.Type
		p *plan
	}
	nextRecent int
)

func planOf(t reflect.Type) *plan {
	for i := range recentPlans {
		if recentPlans[i].t == t {
			return recentPlans[i].p
		}
	}
	p, ok := plans[t]
	if !ok {
		p = makePlan(t)
		plans[t] = p
	}
	recentPlans[nextRecent].t, recentPlans[nextRecent].p = t, p
	nextRecent = (nextRecent + 1) % len(recentPlans)
	return p
}

// makePlan works out struct type t's fast path.
func makePlan(t reflect.Type) *plan {
	p := &plan{ok: !custom(t)}
	for i := 0; p.ok && i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous {
			p.ok = false
			break
		}
		name, opts, ok := jsonName(f)
		if !ok {
			continue
		}
		omit := false
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "":
			case "omitempty":
				omit = true
			default:
				p.ok = false // ",string", ",omitzero", ...
			}
		}
		s, ok := shapeOf(f.Type)
		if !ok || !simpleName(name) {
			p.ok = false
			break
		}
		required := !omit && f.Type.Kind() != reflect.Pointer
		p.fields = append(p.fields, fastField{name: name, index: i, shape: s, required: required, omitEmpty: omit})
	}
	p.whole = len(p.fields) == t.NumField()
	for _, f := range p.fields {
		p.whole = p.whole && !f.shape.ptr && !f.shape.slice && f.shape.kind != kRaw
	}
	// Two fields of one name: encoding/json's rules for which wins are the general path's.
	for i := range p.fields {
		for j := i + 1; j < len(p.fields); j++ {
			if strings.EqualFold(p.fields[i].name, p.fields[j].name) {
				p.ok = false
			}
		}
	}
	return p
}

// ---- encoding ----

// fastAppend appends the encoding of v to out if a fast path covers its type and its values.
func fastAppend(out []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case uint64:
		return strconv.AppendUint(out, x, 10), true
	case int64:
		return strconv.AppendInt(out, x, 10), true
	case int:
		return strconv.AppendInt(out, int64(x), 10), true
	case string:
		return appendString(out, x)
	case bool:
		return strconv.AppendBool(out, x), true
	}
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.Kind() != reflect.Struct {
		return nil, false
	}
	p := planOf(rv.Type())
	if !p.ok {
		return nil, false
	}
	if out == nil {
		out = make([]byte, 0, 64+24*len(p.fields))
	}
	if !p.enc.IsValid() {
		p.enc = reflect.New(rv.Type()).Elem()
		p.encFields = p.fieldsOf(p.enc)
	}
	// One copy of the struct, then its fields as taken once (see plan).
	p.enc.Set(rv)
	defer p.enc.SetZero() // keeps nothing of the value alive after the call
	out = append(out, '{')
	first := true
	for j, f := range p.fields {
		fv := p.encFields[j]
		if f.omitEmpty && empty(fv, f.shape) {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, '"')
		out = append(out, f.name...)
		out = append(out, '"', ':')
		var ok bool
		if out, ok = appendValue(out, fv, f.shape); !ok {
			return nil, false
		}
	}
	return append(out, '}'), true
}

func empty(v reflect.Value, s shape) bool {
	switch {
	case s.ptr:
		return v.IsNil()
	case s.slice || s.kind == kRaw:
		return v.Len() == 0
	}
	return v.IsZero()
}

func appendValue(out []byte, v reflect.Value, s shape) ([]byte, bool) {
	switch {
	case s.kind == kRaw:
		raw := v.Bytes()
		if v.IsNil() {
			return append(out, "null"...), true
		}
		if !compactPlain(raw) {
			return nil, false
		}
		return append(out, raw...), true
	case s.ptr:
		if v.IsNil() {
			return append(out, "null"...), true
		}
		return appendScalar(out, v.Elem(), s.kind)
	case s.slice:
		if v.IsNil() {
			return append(out, "null"...), true
		}
		out = append(out, '[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				out = append(out, ',')
			}
			var ok bool
			if out, ok = appendScalar(out, v.Index(i), s.kind); !ok {
				return nil, false
			}
		}
		return append(out, ']'), true
	}
	return appendScalar(out, v, s.kind)
}

func appendScalar(out []byte, v reflect.Value, k kind) ([]byte, bool) {
	switch k {
	case kString:
		return appendString(out, v.String())
	case kUint:
		return strconv.AppendUint(out, v.Uint(), 10), true
	case kInt:
		return strconv.AppendInt(out, v.Int(), 10), true
	case kBool:
		return strconv.AppendBool(out, v.Bool()), true
	}
	return nil, false
}

// appendString writes s quoted when no byte of it needs an escape and it is valid UTF-8
// without U+2028/U+2029 (which encoding/json escapes and serde does not).
func appendString(out []byte, s string) ([]byte, bool) {
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' {
			return nil, false
		}
		if c >= 0x80 {
			ascii = false
		}
	}
	if !ascii && (!utf8.ValidString(s) || strings.Contains(s, "\u2028") || strings.Contains(s, "\u2029")) {
		return nil, false
	}
	out = append(out, '"')
	out = append(out, s...)
	return append(out, '"'), true
}

// compactPlain reports whether raw is one valid JSON value, without whitespace, escapes or
// non-ASCII bytes: encoding/json writes such a RawMessage as it is.
func compactPlain(raw []byte) bool {
	for _, c := range raw {
		if c <= ' ' || c == '\\' || c >= 0x80 {
			return false
		}
	}
	end, ok := skipChecked(raw, 0, 0)
	return ok && end == len(raw)
}

// ---- decoding ----

// fastUnmarshal decodes data into v (a pointer) if a fast path covers the type and the input;
// false leaves v untouched.
func fastUnmarshal(data []byte, v any, denyUnknown bool) bool {
	switch x := v.(type) {
	case *uint64:
		if x == nil {
			return false
		}
		n, ok := wholeUint(data, 64)
		if ok {
			*x = n
		}
		return ok
	case *int64:
		if x == nil {
			return false
		}
		n, ok := wholeInt(data, 64)
		if ok {
			*x = n
		}
		return ok
	case *string:
		if x == nil {
			return false
		}
		i := skipSpace(data, 0)
		s, end, ok := readString(data, i)
		if !ok || skipSpace(data, end) != len(data) {
			return false
		}
		*x = s
		return true
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return false
	}
	t := rv.Elem().Type()
	p := planOf(t)
	if !p.ok || len(p.fields) > 64 {
		return false
	}
	if !p.scratch.IsValid() {
		p.scratch = reflect.New(t).Elem()
		p.scratchFields = p.fieldsOf(p.scratch)
	}
	tmp := p.scratch
	tmp.SetZero()
	var seen uint64
	next := 0 // the field the next member most likely names
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		i++
	} else {
		for {
			name, end, ok := readName(data, i)
			if !ok {
				return false
			}
			i = skipSpace(data, end)
			if i >= len(data) || data[i] != ':' {
				return false
			}
			i = skipSpace(data, i+1)
			// Documents mostly name the members in the struct's order: start after the field
			// matched last, so that most members take one comparison. Compared as bytes: the
			// compiler makes no string of them for this.
			idx := -1
			for k := range p.fields {
				j := (next + k) % len(p.fields)
				if string(name) == p.fields[j].name {
					idx, next = j, j+1
					break
				}
			}
			if idx < 0 {
				if denyUnknown {
					return false
				}
				unknown := string(name) // one string, on this rare path only
				for j := range p.fields {
					if strings.EqualFold(p.fields[j].name, unknown) {
						return false // encoding/json would fill it
					}
				}
				if i, ok = skipChecked(data, i, 0); !ok {
					return false
				}
			} else {
				if seen&(1<<idx) != 0 {
					return false // a duplicate: the general path's error
				}
				seen |= 1 << idx
				f := &p.fields[idx]
				if i, ok = readValue(data, i, p.scratchFields[idx], f.shape); !ok {
					return false
				}
			}
			i = skipSpace(data, i)
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
				continue
			}
			if i < len(data) && data[i] == '}' {
				i++
				break
			}
			return false
		}
	}
	if skipSpace(data, i) != len(data) {
		return false
	}
	for j, f := range p.fields {
		if f.required && seen&(1<<j) == 0 {
			return false // missing: the general path's error
		}
	}
	dst := rv.Elem()
	if p.whole && seen == 1<<len(p.fields)-1 {
		dst.Set(tmp) // every field read, each a plain value: the same as field by field
		return true
	}
	for j, f := range p.fields {
		if seen&(1<<j) != 0 {
			store(dst.Field(f.index), p.scratchFields[j], f.shape)
		}
	}
	return true
}

// store sets dst to the decoded src the way encoding/json writes into a destination that
// already holds something: through a non-nil pointer, and into a slice's backing array.
func store(dst, src reflect.Value, s shape) {
	switch {
	case s.kind == kRaw:
		dst.SetBytes(append(dst.Bytes()[:0], src.Bytes()...))
	case s.ptr && !src.IsNil() && !dst.IsNil():
		dst.Elem().Set(src.Elem())
	case s.slice && !dst.IsNil():
		dst.Set(reflect.AppendSlice(dst.Slice(0, 0), src))
	default:
		dst.Set(src)
	}
}

// readName reads a member name without escapes or non-ASCII bytes. It is a slice of data,
// not a string: matching it to a field needs no allocation (a string per member was one of a
// Go plugin's larger costs per event).
func readName(data []byte, i int) ([]byte, int, bool) {
	if i >= len(data) || data[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return data[i+1 : j], j + 1, true
		case c < 0x20 || c == '\\' || c >= 0x80:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// readString reads a string without escapes (valid UTF-8, no control characters).
func readString(data []byte, i int) (string, int, bool) {
	if i >= len(data) || data[i] != '"' {
		return "", 0, false
	}
	ascii := true
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			body := data[i+1 : j]
			if !ascii && !utf8.Valid(body) {
				return "", 0, false
			}
			return string(body), j + 1, true
		case c < 0x20 || c == '\\':
			return "", 0, false
		case c >= 0x80:
			ascii = false
		}
	}
	return "", 0, false
}

// digits returns the end of the integer literal at i (canonical: no leading zeros, no
// fraction or exponent after it), and whether it is negative.
func digits(data []byte, i int, signed bool) (start, end int, neg, ok bool) {
	if signed && i < len(data) && data[i] == '-' {
		neg = true
		i++
	}
	start = i
	i = skipDigits(data, i)
	if i == start || (data[start] == '0' && i-start > 1) {
		return 0, 0, false, false
	}
	if i < len(data) && (data[i] == '.' || data[i] == 'e' || data[i] == 'E') {
		return 0, 0, false, false
	}
	return start, i, neg, true
}

func readUint(data []byte, i, bits int) (uint64, int, bool) {
	start, end, _, ok := digits(data, i, false)
	if !ok {
		return 0, 0, false
	}
	n, ok := magnitude(data[start:end])
	return n, end, ok && (bits == 64 || n < 1<<bits)
}

func readInt(data []byte, i, bits int) (int64, int, bool) {
	start, end, neg, ok := digits(data, i, true)
	if !ok {
		return 0, 0, false
	}
	n, ok := magnitude(data[start:end])
	limit := uint64(1) << (bits - 1) // the magnitude of the lowest value
	switch {
	case !ok || n > limit || (!neg && n == limit):
		return 0, 0, false
	case neg:
		return int64(-n), end, true // -limit wraps to the lowest value, as it should
	}
	return int64(n), end, true
}

// maxUint64 is the largest uint64 as digits: a 20-digit literal above it does not fit.
const maxUint64 = "18446744073709551615"

// magnitude is the value of d, canonical decimal digits (see digits), if it fits in 64 bits.
// strconv.ParseUint did this through a string and checks per digit that cost a Go plugin
// several percent of its time per event; up to 19 digits always fit, and 20 fit when they are
// at most maxUint64 (the same length, so compared as text).
func magnitude(d []byte) (uint64, bool) {
	if len(d) > len(maxUint64) || (len(d) == len(maxUint64) && string(d) > maxUint64) {
		return 0, false
	}
	var n uint64
	for _, c := range d {
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

func wholeUint(data []byte, bits int) (uint64, bool) {
	n, end, ok := readUint(data, skipSpace(data, 0), bits)
	return n, ok && skipSpace(data, end) == len(data)
}

func wholeInt(data []byte, bits int) (int64, bool) {
	n, end, ok := readInt(data, skipSpace(data, 0), bits)
	return n, ok && skipSpace(data, end) == len(data)
}

// readValue reads the value at i into v, as shape s says.
func readValue(data []byte, i int, v reflect.Value, s shape) (int, bool) {
	switch {
	case s.kind == kRaw:
		end, ok := skipChecked(data, i, 0)
		if !ok || string(data[i:end]) == "null" {
			return 0, false
		}
		v.SetBytes(data[i:end]) // into the scratch value; store copies it out
		return end, true
	case s.ptr:
		if strings.HasPrefix(string(data[i:min(i+4, len(data))]), "null") {
			v.SetZero()
			return i + 4, true
		}
		elem := reflect.New(v.Type().Elem())
		end, ok := readScalar(data, i, elem.Elem(), s)
		if ok {
			v.Set(elem)
		}
		return end, ok
	case s.slice:
		if i >= len(data) || data[i] != '[' {
			return 0, false
		}
		out := reflect.MakeSlice(v.Type(), 0, 8)
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == ']' {
			v.Set(out)
			return i + 1, true
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		for {
			end, ok := readScalar(data, i, elem, s)
			if !ok {
				return 0, false
			}
			out = reflect.Append(out, elem)
			i = skipSpace(data, end)
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
				continue
			}
			if i < len(data) && data[i] == ']' {
				v.Set(out)
				return i + 1, true
			}
			return 0, false
		}
	}
	return readScalar(data, i, v, s)
}

func readScalar(data []byte, i int, v reflect.Value, s shape) (int, bool) {
	switch s.kind {
	case kString:
		str, end, ok := readString(data, i)
		if ok {
			v.SetString(str)
		}
		return end, ok
	case kUint:
		n, end, ok := readUint(data, i, s.bits)
		if ok {
			v.SetUint(n)
		}
		return end, ok
	case kInt:
		n, end, ok := readInt(data, i, s.bits)
		if ok {
			v.SetInt(n)
		}
		return end, ok
	case kBool:
		rest := string(data[i:min(i+5, len(data))])
		switch {
		case strings.HasPrefix(rest, "true"):
			v.SetBool(true)
			return i + 4, true
		case rest == "false":
			v.SetBool(false)
			return i + 5, true
		}
	}
	return 0, false
}

// skipChecked returns the end of the valid JSON value at i (false for anything invalid, or
// nested deeper than encoding/json's limit).
func skipChecked(data []byte, i, depth int) (int, bool) {
	// Deep nesting is left to the general path and its limit (10,000 in encoding/json).
	if i >= len(data) || depth > 1000 {
		return 0, false
	}
	switch c := data[i]; {
	case c == '"':
		return skipString(data, i)
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == closer {
			return i + 1, true
		}
		for {
			if c == '{' {
				end, ok := skipString(data, i)
				if !ok {
					return 0, false
				}
				i = skipSpace(data, end)
				if i >= len(data) || data[i] != ':' {
					return 0, false
				}
				i = skipSpace(data, i+1)
			}
			end, ok := skipChecked(data, i, depth+1)
			if !ok {
				return 0, false
			}
			i = skipSpace(data, end)
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
				continue
			}
			if i < len(data) && data[i] == closer {
				return i + 1, true
			}
			return 0, false
		}
	case c == 't':
		return i + 4, string(data[i:min(i+4, len(data))]) == "true"
	case c == 'f':
		return i + 5, string(data[i:min(i+5, len(data))]) == "false"
	case c == 'n':
		return i + 4, string(data[i:min(i+4, len(data))]) == "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(data, i)
	}
	return 0, false
}

// skipString returns the end of the valid JSON string at i.
func skipString(data []byte, i int) (int, bool) {
	if i >= len(data) || data[i] != '"' {
		return 0, false
	}
	start := i + 1
	for j := start; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return j + 1, utf8.Valid(data[start:j])
		case c < 0x20:
			return 0, false
		case c == '\\':
			j++
			if j >= len(data) {
				return 0, false
			}
			switch data[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(data) {
					return 0, false
				}
				for _, h := range data[j+1 : j+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return 0, false
					}
				}
				j += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

// skipNumber returns the end of the valid JSON number at i.
func skipNumber(data []byte, i int) (int, bool) {
	if data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		i = skipDigits(data, i)
	default:
		return 0, false
	}
	if i < len(data) && data[i] == '.' {
		end := skipDigits(data, i+1)
		if end == i+1 {
			return 0, false
		}
		i = end
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		end := skipDigits(data, i)
		if end == i {
			return 0, false
		}
		i = end
	}
	return i, true
}

func skipDigits(data []byte, i int) int {
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	return i
}
