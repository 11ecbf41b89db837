package eddy

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
	return decode(data, v, false)
}

// UnmarshalStrict is Unmarshal where members the struct does not name are an error (serde's
// deny_unknown_fields).
func UnmarshalStrict(data []byte, v any) error {
	return decode(data, v, true)
}

type fieldInfo struct {
	name     string
	required bool
}

func structFields(t reflect.Type) []fieldInfo {
	var out []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts := f.Name, ""
		if tag, ok := f.Tag.Lookup("json"); ok {
			if tag == "-" {
				continue
			}
			name, opts, _ = strings.Cut(tag, ",")
			if name == "" {
				name = f.Name
			}
		}
		k := f.Type.Kind()
		optional := strings.Contains(opts, "omitempty") || k == reflect.Pointer || k == reflect.Interface
		out = append(out, fieldInfo{name, !optional})
	}
	return out
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
	fields := structFields(rv.Elem().Type())
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
