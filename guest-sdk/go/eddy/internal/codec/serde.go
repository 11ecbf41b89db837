// Package codec is the Go layer's JSON: encoding/json under the rules serde (the Rust SDK)
// applies, so every language reads and writes the same bytes. serde.go holds the rules;
// fast.go the fast paths for the common shapes, which give the same results or decline.
package codec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// Marshal encodes v as compact JSON the way the Rust SDK (serde_json) writes state and output:
// no HTML escaping of <, > and &, no trailing newline. Struct fields come out in declaration
// order.
func Marshal(v any) ([]byte, error) {
	return Append(nil, v)
}

// Append appends the encoding of v (as Marshal writes it) to out.
func Append(out []byte, v any) ([]byte, error) {
	if b, ok := fastAppend(out, v); ok {
		return b, nil
	}
	b, err := marshalGeneral(v)
	return append(out, b...), err
}

// marshalGeneral is Marshal without the fast paths.
func marshalGeneral(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return b[:len(b)-1], nil
}

// Unmarshal decodes JSON into v with serde's rules for structs (v a pointer to a struct):
// a field that is not a pointer and has no `omitempty` in its json tag is required and may not
// be null; a field given twice is an error; an array is read as the fields in declaration
// order. Other members are ignored. Integers must be
// integer literals in range (1.0 is not a uint64). Anything else is encoding/json.
func Unmarshal(data []byte, v any) error {
	if fastUnmarshal(data, v, false) {
		return nil
	}
	return decode(data, v, false)
}

// UnmarshalStrict is Unmarshal where members the struct does not name are an error (serde's
// deny_unknown_fields).
func UnmarshalStrict(data []byte, v any) error {
	if fastUnmarshal(data, v, true) {
		return nil
	}
	return decode(data, v, true)
}

type fieldInfo struct {
	name     string
	required bool
}

// jsonName returns the member name and tag options of a struct field, or false for a field
// encoding/json leaves out (unexported, or tagged "-").
func jsonName(f reflect.StructField) (name, opts string, ok bool) {
	if !f.IsExported() {
		return "", "", false
	}
	name = f.Name
	if tag, tagged := f.Tag.Lookup("json"); tagged {
		if tag == "-" {
			return "", "", false
		}
		name, opts, _ = strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
	}
	return name, opts, true
}

func structFields(t reflect.Type) []fieldInfo {
	var out []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, ok := jsonName(f)
		if !ok {
			continue
		}
		k := f.Type.Kind()
		optional := strings.Contains(opts, "omitempty") || k == reflect.Pointer || k == reflect.Interface
		out = append(out, fieldInfo{name, !optional})
	}
	return out
}

// The fields of each struct type decoded so far (the layer runs on one thread).
var fieldCache = map[reflect.Type][]fieldInfo{}

func cachedFields(t reflect.Type) []fieldInfo {
	fields, ok := fieldCache[t]
	if !ok {
		fields = structFields(t)
		fieldCache[t] = fields
	}
	return fields
}

// checkMembersFast does the checks of decode's slow path (required fields, nulls, then
// duplicate and unknown members in document order) with one pass over valid JSON, without the
// map and the token stream that cost most of a decode. It only handles a top-level object
// whose member names are plain ASCII without escapes, where the raw name is the name; it
// returns done=false for anything else, which the slow path then decides.
func checkMembersFast(data []byte, fields []fieldInfo, denyUnknown bool) (done bool, err error) {
	const maxFields = 64
	if len(fields) > maxFields {
		return false, nil
	}
	type member struct {
		name  string
		null  bool
		index int // in fields, or -1
	}
	var members [16]member
	list := members[:0]
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false, nil
	}
	i = skipSpace(data, i+1)
	for i < len(data) && data[i] != '}' {
		if data[i] != '"' {
			return false, nil
		}
		start := i + 1
		end := start
		for end < len(data) && data[end] != '"' {
			if data[end] == '\\' || data[end] >= 0x80 {
				return false, nil
			}
			end++
		}
		name := data[start:end]
		i = skipSpace(data, end+1)
		if i >= len(data) || data[i] != ':' {
			return false, nil
		}
		i = skipSpace(data, i+1)
		valueStart := i
		i = skipValue(data, i)
		m := member{name: string(name), index: -1}
		m.null = string(data[valueStart:i]) == "null"
		for j := range fields {
			if fields[j].name == m.name {
				m.index = j
				break
			}
		}
		list = append(list, m)
		i = skipSpace(data, i)
		if i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	// Required fields, in declaration order; the last occurrence of a name is its value (as
	// in the map of the slow path).
	for j, f := range fields {
		if !f.required {
			continue
		}
		present, null := false, false
		for _, m := range list {
			if m.index == j {
				present, null = true, m.null
			}
		}
		if !present {
			return true, fmt.Errorf("missing field `%s`", f.name)
		}
		if null {
			return true, fmt.Errorf("invalid type: null, expected a value for field `%s`", f.name)
		}
	}
	// Unknown and duplicate members, in document order.
	var seen [maxFields]bool
	for _, m := range list {
		if m.index < 0 {
			if denyUnknown {
				names := make([]string, len(fields))
				for k, f := range fields {
					names[k] = "`" + f.name + "`"
				}
				return true, fmt.Errorf("unknown field `%s`, expected one of %s", m.name, strings.Join(names, ", "))
			}
			continue
		}
		if seen[m.index] {
			return true, fmt.Errorf("duplicate field `%s`", m.name)
		}
		seen[m.index] = true
	}
	return true, nil
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n') {
		i++
	}
	return i
}

// skipValue returns the end of the (valid) JSON value starting at i.
func skipValue(data []byte, i int) int {
	depth := 0
	for i < len(data) {
		switch c := data[i]; c {
		case '"':
			i++
			for i < len(data) && data[i] != '"' {
				if data[i] == '\\' {
					i++
				}
				i++
			}
			i++
			if depth == 0 {
				return i
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\r', '\n':
			if depth == 0 {
				return i
			}
		}
		i++
	}
	return i
}

func kindName(first byte) string {
	switch first {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func decode(data []byte, v any, denyUnknown bool) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return json.Unmarshal(data, v)
	}
	if !json.Valid(data) {
		return json.Unmarshal(data, v) // for its syntax error message
	}
	fields := cachedFields(rv.Elem().Type())
	// serde also reads a struct from an array of its fields, in declaration order.
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); trimmed[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(data, &items); err != nil {
			return err
		}
		if len(items) > len(fields) {
			return fmt.Errorf("invalid length %d, expected struct %s with %d elements", len(items), rv.Elem().Type().Name(), len(fields))
		}
		var obj bytes.Buffer
		obj.WriteByte('{')
		for i, item := range items {
			if i > 0 {
				obj.WriteByte(',')
			}
			name, _ := Marshal(fields[i].name)
			obj.Write(name)
			obj.WriteByte(':')
			obj.Write(item)
		}
		obj.WriteByte('}')
		data = obj.Bytes()
	}
	if done, err := checkMembersFast(data, fields, denyUnknown); done {
		if err != nil {
			return err
		}
		return json.Unmarshal(data, v)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		trimmed := bytes.TrimLeft(data, " \t\r\n")
		return fmt.Errorf("invalid type: %s, expected struct %s", kindName(trimmed[0]), rv.Elem().Type().Name())
	}
	known := make(map[string]bool, len(fields))
	for _, f := range fields {
		known[f.name] = true
		raw, present := members[f.name]
		if f.required && !present {
			return fmt.Errorf("missing field `%s`", f.name)
		}
		if f.required && string(raw) == "null" {
			return fmt.Errorf("invalid type: null, expected a value for field `%s`", f.name)
		}
	}
	if err := checkDuplicatesAndUnknown(data, known, denyUnknown, fields); err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// checkDuplicatesAndUnknown walks the top-level members in order.
func checkDuplicatesAndUnknown(data []byte, known map[string]bool, denyUnknown bool, fields []fieldInfo) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // '{'
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key := t.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
		if !known[key] {
			if denyUnknown {
				names := make([]string, len(fields))
				for i, f := range fields {
					names[i] = "`" + f.name + "`"
				}
				return fmt.Errorf("unknown field `%s`, expected one of %s", key, strings.Join(names, ", "))
			}
			continue
		}
		if seen[key] {
			return fmt.Errorf("duplicate field `%s`", key)
		}
		seen[key] = true
	}
	return nil
}
