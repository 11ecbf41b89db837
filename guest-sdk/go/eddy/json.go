package eddy

import "wit_component/eddy/internal/codec"

// Marshal encodes v as compact JSON the way the Rust SDK (serde_json) writes state and output:
// no HTML escaping of <, > and &, no trailing newline. Struct fields come out in declaration
// order.
func Marshal(v any) ([]byte, error) { return codec.Marshal(v) }

// Unmarshal decodes JSON into v with serde's rules for structs (v a pointer to a struct):
// a field that is not a pointer and has no `omitempty` in its json tag is required and may not
// be null; a field given twice is an error; an array is read as the fields in declaration
// order. Other members are ignored. Integers must be integer literals in range (1.0 is not a
// uint64). Anything else is encoding/json.
func Unmarshal(data []byte, v any) error { return codec.Unmarshal(data, v) }

// UnmarshalStrict is Unmarshal where members the struct does not name are an error (serde's
// deny_unknown_fields).
func UnmarshalStrict(data []byte, v any) error { return codec.UnmarshalStrict(data, v) }
