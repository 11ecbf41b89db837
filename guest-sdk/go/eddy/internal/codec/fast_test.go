package codec

// The fast paths against the general path: for every input, Unmarshal (fast path first) must
// give what decode (the general path alone) gives: the same error text, or the same value; and
// Marshal the same bytes as marshalGeneral. Inputs are the edge cases below, then documents
// generated from them with a fixed seed. Run natively: bash scripts/guests/go.sh test.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

type tx struct {
	ID          string `json:"id"`
	Customer    string `json:"customer"`
	AmountCents uint64 `json:"amount_cents"`
	Ts          uint64 `json:"ts"`
}

type mixed struct {
	Name    string          `json:"name"`
	Count   int32           `json:"count"`
	Small   uint8           `json:"small,omitempty"`
	Flag    bool            `json:"flag,omitempty"`
	Limit   *uint64         `json:"limit"`
	Label   *string         `json:"label"`
	Recent  []uint64        `json:"recent,omitempty"`
	Tags    []string        `json:"tags,omitempty"`
	Info    json.RawMessage `json:"info,omitempty"`
	NoTag   int64
	private int
}

type cents uint64

func (c cents) MarshalJSON() ([]byte, error) { return []byte(fmt.Sprintf("\"%d\"", uint64(c))), nil }

type withCustom struct {
	Amount cents `json:"amount"`
}

type withFloat struct {
	X float64 `json:"x"`
}

var memberNames = []string{"id", "customer", "amount_cents", "ts", "ID", "Customer", "extra", "name",
	"count", "small", "flag", "limit", "label", "recent", "tags", "info", "NoTag", "noTag", "x", "amount"}

var values = []string{
	`"tx-1"`, `""`, `"c-42"`, `"caf\u00e9"`, `"café"`, `"a\"b"`, `"a\\b"`, `"\ud800"`, "\"bad\xff\"",
	"\"tab\there\"", `"<&>"`, `"\u2028"`,
	`0`, `1`, `01`, `-1`, `-0`, `255`, `256`, `1.0`, `1e3`, `1E3`, `-`, `18446744073709551615`,
	`18446744073709551616`, `9223372036854775807`, `-9223372036854775808`, `-9223372036854775809`,
	`2147483648`, `-2147483649`,
	`true`, `false`, `null`, `tru`, `nul`,
	`[]`, `[1,2,3]`, `[ 1 , 2 ]`, `[1,]`, `["a","b"]`, `[null]`, `[1.5]`, `[01]`,
	`{}`, `{"a":1}`, `{"a":[{"b":null}]}`, `{"a":}`, `{"a" 1}`, `{"a":1,}`,
}

func decodeBoth[T any](t *testing.T, data []byte, strict bool) {
	t.Helper()
	var general, fast T
	errGeneral := decode(data, &general, strict)
	var errFast error
	if strict {
		errFast = UnmarshalStrict(data, &fast)
	} else {
		errFast = Unmarshal(data, &fast)
	}
	if fmt.Sprint(errGeneral) != fmt.Sprint(errFast) {
		t.Fatalf("%T strict=%v %q: general error %v, with fast paths %v", general, strict, data, errGeneral, errFast)
	}
	if errGeneral == nil && !reflect.DeepEqual(general, fast) {
		t.Fatalf("%T strict=%v %q: general %+v, with fast paths %+v", general, strict, data, general, fast)
	}
}

func checkAll(t *testing.T, data []byte) {
	t.Helper()
	for _, strict := range []bool{false, true} {
		decodeBoth[tx](t, data, strict)
		decodeBoth[mixed](t, data, strict)
		decodeBoth[withCustom](t, data, strict)
		decodeBoth[withFloat](t, data, strict)
		decodeBoth[uint64](t, data, strict)
		decodeBoth[int64](t, data, strict)
		decodeBoth[string](t, data, strict)
	}
}

func TestEdgeCases(t *testing.T) {
	docs := []string{
		`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1700000000000}`,
		` { "id" : "tx-1" , "customer":"c-42","amount_cents":1250,"ts":1700000000000 } `,
		`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1700000000000,"merchant":{"x":[1,"y"]}}`,
		`{"id":"tx-1","customer":"c-42","amount_cents":1250}`,
		`{"id":"tx-1","id":"tx-2","customer":"c-42","amount_cents":1250,"ts":1}`,
		`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1,"ID":"x"}`,
		`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1} x`,
		`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1}{}`,
		`{"id":null,"customer":"c-42","amount_cents":1250,"ts":1}`,
		`["tx-1","c-42",1250,1]`,
		`{"name":"n","count":-5,"limit":null,"label":"l","recent":[1,2],"tags":["a"],"info":{"k":1},"NoTag":3}`,
		`{"name":"n","count":1,"limit":7,"label":null,"NoTag":0,"info":null}`,
		`{"name":"n","count":1,"small":300,"NoTag":0}`,
		`{"name":"n","count":1,"recent":null,"NoTag":0}`,
		`{"name":"n","count":1,"notag":5}`,
		`{"amount":5}`, `{"x":1.5}`, `{}`, ``, `   `, `{`, `"s"`, `42`, ` 42 `, `-7`, `null`,
	}
	for _, d := range docs {
		checkAll(t, []byte(d))
	}
	for _, v := range values {
		checkAll(t, []byte(v))
		for _, name := range memberNames {
			checkAll(t, []byte(`{"`+name+`":`+v+`}`))
		}
	}
}

func TestGeneratedDocuments(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	space := []string{"", "", "", " ", "\n\t"}
	for n := 0; n < 20000; n++ {
		var b strings.Builder
		b.WriteString(space[r.Intn(len(space))] + "{")
		members := r.Intn(7)
		for m := 0; m < members; m++ {
			if m > 0 {
				b.WriteString(",")
			}
			b.WriteString(space[r.Intn(len(space))])
			fmt.Fprintf(&b, "%q:%s", memberNames[r.Intn(len(memberNames))], space[r.Intn(len(space))])
			b.WriteString(values[r.Intn(len(values))])
		}
		b.WriteString(space[r.Intn(len(space))] + "}")
		checkAll(t, []byte(b.String()))
	}
}

// The fast path must be taken where it should, or the comparisons above prove nothing.
func TestFastPathIsTaken(t *testing.T) {
	var x tx
	if !fastUnmarshal([]byte(`{"id":"tx-1","customer":"c-42","amount_cents":1250,"ts":1,"other":[1,{"a":null}]}`), &x, false) {
		t.Fatal("a plain transaction did not take the fast path")
	}
	if x != (tx{"tx-1", "c-42", 1250, 1}) {
		t.Fatalf("decoded %+v", x)
	}
	var m mixed
	if !fastUnmarshal([]byte(`{"name":"n","count":-5,"limit":9,"label":null,"recent":[1,2],"info":{"k":1},"NoTag":3}`), &m, false) {
		t.Fatal("mixed did not take the fast path")
	}
	if _, ok := fastAppend(nil, m); !ok {
		t.Fatal("mixed did not encode on the fast path")
	}
	var n uint64
	if !fastUnmarshal([]byte("18446744073709551615"), &n, false) || n != 1<<64-1 {
		t.Fatal("uint64 did not take the fast path")
	}
	if _, ok := fastAppend(nil, withCustom{5}); ok {
		t.Fatal("a type with MarshalJSON took the fast path")
	}
}

func TestMarshalMatchesGeneral(t *testing.T) {
	limit, label := uint64(70), "lbl"
	cases := []any{
		tx{"tx-1", "c-42", 1250, 1700000000000},
		tx{"t\"x", "c\\", 0, 0},
		tx{"caf\u00e9 <&>", "\u2028", 1, 2},
		tx{"bad\xff", "\x01", 1, 2},
		mixed{Name: "n", Count: -3, Limit: &limit, Label: &label, Recent: []uint64{1, 2}, Tags: []string{"a", "b\n"}, Info: json.RawMessage(`{"k":[1,2]}`)},
		mixed{Name: "", Recent: []uint64{}, Info: json.RawMessage(`null`)},
		mixed{Info: json.RawMessage(`{ "k": 1 }`)},
		mixed{Info: json.RawMessage(`"\u00e9"`)},
		mixed{Small: 3, Flag: true, NoTag: -9},
		withCustom{5}, withFloat{1.5},
		uint64(18446744073709551615), int64(-9223372036854775808), 42, "plain", "quo\"te", "tab\t", true, false,
		[]uint64{1, 2}, map[string]int{"a": 1}, nil,
	}
	for _, v := range cases {
		want, errWant := marshalGeneral(v)
		got, errGot := Marshal(v)
		if fmt.Sprint(errWant) != fmt.Sprint(errGot) || string(want) != string(got) {
			t.Fatalf("%#v: general %q (%v), with fast paths %q (%v)", v, want, errWant, got, errGot)
		}
		appended, errAppend := Append([]byte("prefix,"), v)
		if fmt.Sprint(errWant) != fmt.Sprint(errAppend) || (errWant == nil && string(appended) != "prefix,"+string(want)) {
			t.Fatalf("%#v: Append gave %q (%v), Marshal %q (%v)", v, appended, errAppend, want, errWant)
		}
	}
}

// Corners where a fast path can quietly part from encoding/json: quotes in tag names, types
// with their own text form, nil typed pointers, nesting around encoding/json's depth limit.

type quoteTag struct {
	A string `json:"a'b"`
	B string "json:\"c`d\""
}

type level int

func (l level) AppendText(b []byte) ([]byte, error) {
	return append(b, fmt.Sprintf("L%d", int(l))...), nil
}

type withAppender struct {
	L  level   `json:"l"`
	Ls []level `json:"ls"`
}

type reused struct {
	S []string        `json:"s"`
	P *int            `json:"p"`
	R json.RawMessage `json:"r"`
}

func TestCornersWhereThePathsCouldPart(t *testing.T) {
	// A tag name ends at a quote or backquote for encoding/json.
	for _, d := range []string{`{"a'b":"x","c` + "`" + `d":"y"}`, `{"a":"x","c":"y"}`, `{"a'b":"x","a":"y"}`} {
		checkAll(t, []byte(d))
		decodeBoth[quoteTag](t, []byte(d), false)
	}
	for _, v := range []any{quoteTag{"x", "y"}, withAppender{3, []level{1, 2}}} {
		want, errWant := marshalGeneral(v)
		got, errGot := Marshal(v)
		if fmt.Sprint(errWant) != fmt.Sprint(errGot) || string(want) != string(got) {
			t.Fatalf("%#v: general %q (%v), with fast paths %q (%v)", v, want, errWant, got, errGot)
		}
	}
	// Nil typed pointers: an error, not a panic.
	for _, v := range []any{(*uint64)(nil), (*int64)(nil), (*string)(nil)} {
		if Unmarshal([]byte(`1`), v) == nil || Unmarshal([]byte(`"s"`), v) == nil {
			t.Fatalf("%T: decoding into nil gave no error", v)
		}
	}
	// Nesting around encoding/json's limit, in an unknown member and in a RawMessage.
	for _, n := range []int{999, 1000, 1001, 9999, 10000, 10001} {
		deep := strings.Repeat("[", n) + strings.Repeat("]", n)
		decodeBoth[tx](t, []byte(`{"id":"x","customer":"c","amount_cents":1,"ts":1,"u":`+deep+`}`), false)
		decodeBoth[mixed](t, []byte(`{"name":"n","count":1,"NoTag":0,"info":`+deep+`}`), false)
		want, errWant := marshalGeneral(mixed{Info: json.RawMessage(deep)})
		got, errGot := Marshal(mixed{Info: json.RawMessage(deep)})
		if fmt.Sprint(errWant) != fmt.Sprint(errGot) || string(want) != string(got) {
			t.Fatalf("depth %d: general %.40q (%v), with fast paths %.40q (%v)", n, want, errWant, got, errGot)
		}
	}
}

// Decoding into a destination that already holds values writes where encoding/json writes:
// through its pointers and into its slices' backing arrays.
func TestDecodingIntoAFilledDestination(t *testing.T) {
	first := []byte(`{"s":["x","y"],"p":1,"r":{"k":1}}`)
	second := []byte(`{"s":["q","r"],"p":5,"r":[2]}`)
	var g, f reused
	if err := decode(first, &g, false); err != nil {
		t.Fatal(err)
	}
	if err := decode(first, &f, false); err != nil {
		t.Fatal(err)
	}
	gS, gP, gR := g.S, g.P, g.R
	fS, fP, fR := f.S, f.P, f.R
	if err := decode(second, &g, false); err != nil {
		t.Fatal(err)
	}
	if !fastUnmarshal(second, &f, false) {
		t.Fatal("the fast path declined")
	}
	if !reflect.DeepEqual(g, f) {
		t.Fatalf("general %+v, fast %+v", g, f)
	}
	if fmt.Sprint(gS, *gP, string(gR)) != fmt.Sprint(fS, *fP, string(fR)) {
		t.Fatalf("what the old slices and pointer see: general %v %v %s, fast %v %v %s", gS, *gP, gR, fS, *fP, fR)
	}
}

type plainOmit struct {
	A string `json:"a"`
	B uint32 `json:"b,omitempty"`
}

type withSkipped struct {
	A string `json:"a"`
	S string `json:"-"`
}

// decodeIntoBoth decodes data into two copies of prefilled, one by the general path and one
// with the fast paths first: a destination that holds values keeps what the document does
// not name, whether the fast path stores the struct at once or field by field.
func decodeIntoBoth[T any](t *testing.T, data string, prefilled T) {
	t.Helper()
	general, fast := prefilled, prefilled
	errGeneral := decode([]byte(data), &general, false)
	errFast := Unmarshal([]byte(data), &fast)
	if fmt.Sprint(errGeneral) != fmt.Sprint(errFast) || !reflect.DeepEqual(general, fast) {
		t.Fatalf("%T %q into %+v: general %+v (%v), with fast paths %+v (%v)", prefilled, data, prefilled, general, errGeneral, fast, errFast)
	}
}

func TestStructsStoredAtOnceOrFieldByField(t *testing.T) {
	decodeIntoBoth(t, `{"id":"tx-2","customer":"c","amount_cents":1,"ts":2}`, tx{"tx-1", "c-42", 1250, 1})
	decodeIntoBoth(t, `{"a":"x","b":7}`, plainOmit{"old", 9})
	decodeIntoBoth(t, `{"a":"x"}`, plainOmit{"old", 9})
	decodeIntoBoth(t, `{"b":7}`, plainOmit{"old", 9})
	decodeIntoBoth(t, `{"a":"x"}`, withSkipped{"old", "kept"})
	limit := uint64(3)
	decodeIntoBoth(t, `{"name":"n","count":2,"limit":9,"label":null,"NoTag":1}`, mixed{Name: "m", Limit: &limit, Recent: []uint64{5}})
	// The fast path took these (or the comparisons prove nothing about it).
	var p plainOmit
	if !fastUnmarshal([]byte(`{"a":"x","b":7}`), &p, false) || p != (plainOmit{"x", 7}) {
		t.Fatalf("plainOmit: %+v", p)
	}
	w := withSkipped{"old", "kept"}
	if !fastUnmarshal([]byte(`{"a":"x"}`), &w, false) || w != (withSkipped{"x", "kept"}) {
		t.Fatalf("withSkipped: %+v", w)
	}
}
