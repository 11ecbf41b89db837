// Package eddy is the thin Go layer for writing Eddy plugins: implement Plugin (Init and
// Process, plus any of the optional hooks), call Register from an init function, and build with
// scripts/guests/go.sh. The layer runs the batch loop, points keyed state at the event being
// processed and supplies defaults for the optional exports of the `packed-processor` world.
// See ../README.md.
package eddy

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"

	"wit_component/eddy_plugin_broadcast_handler"
	"wit_component/eddy_plugin_keyed_visitor"
	"wit_component/eddy_plugin_lookup_planner"
	"wit_component/eddy_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Plugin is what every plugin implements.
type Plugin interface {
	// Init is called once per instance with the pipeline's plugin.config (JSON text, "{}" when
	// none is set). Create state handles here. An error stops the pipeline from starting.
	Init(config Config) error
	// Process handles one event; keyed state handles act on this event's key.
	Process(event *Event) Outcome
}

// BroadcastHandler is implemented by plugins with broadcast inputs. Without it, every
// broadcast event is rejected (as the Rust SDK's default does).
type BroadcastHandler interface {
	ProcessBroadcast(event *BroadcastEvent) error
}

// LookupPlanner is implemented by plugins that declare their lookups ahead of Process.
type LookupPlanner interface {
	PlanLookups(event *Event) []LookupRequest
}

// Visitor is implemented by plugins that visit keyed state (VisitAllKeys). Default: keep.
type Visitor interface {
	Visit(tag, state string, entry VisitedEntry) VisitAction
}

// Migrator is implemented by plugins that transform state when replacing an older version.
type Migrator interface {
	Migrate(previousVersion string) error
}

// The reasons used by the layer: notInitialised is every SDK's text; noBroadcast names the
// method a Go plugin adds.
const (
	notInitialised = "plugin not initialised"
	noBroadcast    = "this plugin does not handle broadcast events: give the plugin type a ProcessBroadcast(*eddy.BroadcastEvent) error method, or remove the pipeline's [broadcast] inputs"
)

var (
	registered  Plugin
	initialised bool
	// currentEvent is the index in the batch of the event being processed, or -1.
	currentEvent int64 = -1
)

// Register sets the plugin. Call it once, from an init function of the plugin's package.
func Register(p Plugin) {
	registered = p
}

// Automatic GC is off: Go's collector, when it starts inside the allocation the host asks for
// while passing a value in (cabi_realloc), reads the clock through WASI, which wasmtime refuses
// ("cannot leave component instance", wasmtime issue 14318). The layer collects explicitly
// instead, from inside the exports, after each call that brought the bytes allocated since the
// last collection to GCBytes, or the events handled to GCInterval. Keep GCBytes well below the
// pipeline's plugin memory limit (limits.memory_mb, 64 MiB by default): the heap grows by up to
// GCBytes (plus one batch) between collections.
var (
	GCBytes    uint64 = 16 << 20
	GCInterval        = 100_000
)

var (
	sinceGC     int
	allocAtGC   uint64
	allocSample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
)

func init() {
	debug.SetGCPercent(-1)
}

func allocated() uint64 {
	metrics.Read(allocSample)
	return allocSample[0].Value.Uint64()
}

func maybeGC(work int) {
	sinceGC += work
	if sinceGC >= GCInterval || allocated()-allocAtGC >= GCBytes {
		runtime.GC()
		sinceGC = 0
		allocAtGC = allocated()
	}
}

// ---- events and outcomes -----------------------------------------------------------------

// Header is a NATS header.
type Header struct {
	Name, Value string
}

// Event is one input event.
type Event struct {
	Key         []byte
	Subject     string
	Headers     []Header
	Payload     []byte
	TimestampMs uint64
	Sequence    uint64
}

// Header returns the first header called name.
func (e *Event) Header(name string) (string, bool) {
	return findHeader(e.Headers, name)
}

// JSON decodes the payload into v (see Unmarshal for the rules).
func (e *Event) JSON(v any) error {
	return Unmarshal(e.Payload, v)
}

func findHeader(headers []Header, name string) (string, bool) {
	for _, h := range headers {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

func convertHeaders(hs []witTypes.Tuple2[string, string]) []Header {
	out := make([]Header, len(hs))
	for i, h := range hs {
		out[i] = Header{h.F0, h.F1}
	}
	return out
}

func convertEvent(e *eddy_plugin_types.Event) Event {
	return Event{
		Key:         e.Key,
		Subject:     e.Subject,
		Headers:     convertHeaders(e.Headers),
		Payload:     e.Payload,
		TimestampMs: e.TimestampMs,
		Sequence:    e.Sequence,
	}
}

// Output is one message to publish.
type Output struct {
	Subject *string // nil: the pipeline's default output subject
	Headers []Header
	Payload []byte
}

// NewOutput is a message with this payload to the default subject.
func NewOutput(payload []byte) Output {
	return Output{Payload: payload}
}

// JSONOutput is a message whose payload is v in compact JSON.
func JSONOutput(v any) (Output, error) {
	b, err := Marshal(v)
	if err != nil {
		return Output{}, fmt.Errorf("cannot encode output as JSON: %w", err)
	}
	return Output{Payload: b}, nil
}

// WithHeader adds a header.
func (o Output) WithHeader(name, value string) Output {
	o.Headers = append(o.Headers, Header{name, value})
	return o
}

// WithSubject sets the subject.
func (o Output) WithSubject(subject string) Output {
	o.Subject = &subject
	return o
}

type outcomeKind uint8

const (
	kindEmit outcomeKind = iota
	kindDrop
	kindReject
)

// Outcome is what becomes of an event: Emit, Drop or Reject.
type Outcome struct {
	kind    outcomeKind
	outputs []Output
	reason  string
}

// Emit publishes these messages (possibly none).
func Emit(outputs ...Output) Outcome { return Outcome{kind: kindEmit, outputs: outputs} }

// Drop filters the event out on purpose.
func Drop() Outcome { return Outcome{kind: kindDrop} }

// Reject sends the event to the dead-letter subject with this reason.
func Reject(reason string) Outcome { return Outcome{kind: kindReject, reason: reason} }

// Rejectf is Reject with fmt.Sprintf.
func Rejectf(format string, args ...any) Outcome { return Reject(fmt.Sprintf(format, args...)) }

func (o Outcome) toWit() eddy_plugin_types.Outcome {
	switch o.kind {
	case kindDrop:
		return eddy_plugin_types.MakeOutcomeDrop()
	case kindReject:
		return eddy_plugin_types.MakeOutcomeReject(o.reason)
	}
	outs := make([]eddy_plugin_types.Output, len(o.outputs))
	for i, out := range o.outputs {
		subject := witTypes.None[string]()
		if out.Subject != nil {
			subject = witTypes.Some(*out.Subject)
		}
		headers := make([]witTypes.Tuple2[string, string], len(out.Headers))
		for j, h := range out.Headers {
			headers[j] = witTypes.Tuple2[string, string]{F0: h.Name, F1: h.Value}
		}
		outs[i] = eddy_plugin_types.Output{Subject: subject, Headers: headers, Payload: out.Payload}
	}
	return eddy_plugin_types.MakeOutcomeEmit(outs)
}

// ---- config ------------------------------------------------------------------------------

// Config is the plugin configuration handed to Init.
type Config struct {
	Raw string
}

// Parse decodes the configuration into v like the Rust SDK (unknown fields are an error; see
// UnmarshalStrict), with errors prefixed "invalid plugin config: ".
func (c Config) Parse(v any) error {
	text := c.Raw
	if isBlank(text) {
		text = "{}"
	}
	if err := UnmarshalStrict([]byte(text), v); err != nil {
		return fmt.Errorf("invalid plugin config: %w", err)
	}
	return nil
}

func isBlank(s string) bool {
	for _, c := range s {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}

// ---- exports (called by the glue packages) -----------------------------------------------

func ok() witTypes.Result[witTypes.Unit, string] {
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func fail(msg string) witTypes.Result[witTypes.Unit, string] {
	return witTypes.Err[witTypes.Unit, string](msg)
}

// ExportInit implements handler.init.
func ExportInit(config string) witTypes.Result[witTypes.Unit, string] {
	initialised = false
	if registered == nil {
		return fail("no plugin registered: call eddy.Register from an init function")
	}
	if err := registered.Init(Config{Raw: config}); err != nil {
		return fail(err.Error())
	}
	initialised = true
	return ok()
}

// ExportHandle implements handler.handle.
func ExportHandle(events []eddy_plugin_types.Event) []eddy_plugin_types.Outcome {
	out := make([]eddy_plugin_types.Outcome, len(events))
	for i := range events {
		if !initialised {
			out[i] = eddy_plugin_types.MakeOutcomeReject(notInitialised)
			continue
		}
		ev := convertEvent(&events[i])
		currentEvent = int64(i)
		outcome := registered.Process(&ev)
		currentEvent = -1
		out[i] = outcome.toWit()
	}
	finishBatch()
	forgetBatchReads()
	maybeGC(len(events))
	return out
}

// ExportHandleBroadcast implements broadcast-handler.handle-broadcast.
func ExportHandleBroadcast(events []eddy_plugin_broadcast_handler.BroadcastEvent) []witTypes.Result[witTypes.Unit, string] {
	out := make([]witTypes.Result[witTypes.Unit, string], len(events))
	handler, handles := registered.(BroadcastHandler)
	for i := range events {
		switch {
		case !initialised:
			out[i] = fail(notInitialised)
		case !handles:
			out[i] = fail(noBroadcast)
		default:
			e := &events[i]
			be := BroadcastEvent{
				Input:       e.Input,
				Subject:     e.Subject,
				Headers:     convertHeaders(e.Headers),
				Payload:     e.Payload,
				TimestampMs: e.TimestampMs,
				Sequence:    e.Sequence,
			}
			if err := handler.ProcessBroadcast(&be); err != nil {
				out[i] = fail(err.Error())
			} else {
				out[i] = ok()
			}
		}
	}
	maybeGC(len(events))
	return out
}

// ExportPrepare implements lookup-planner.prepare.
func ExportPrepare(events []eddy_plugin_types.Event) [][]eddy_plugin_lookup_planner.LookupRequest {
	out := make([][]eddy_plugin_lookup_planner.LookupRequest, len(events))
	planner, plans := registered.(LookupPlanner)
	for i := range events {
		out[i] = []eddy_plugin_lookup_planner.LookupRequest{}
		if !initialised || !plans {
			continue
		}
		ev := convertEvent(&events[i])
		for _, r := range planner.PlanLookups(&ev) {
			out[i] = append(out[i], eddy_plugin_lookup_planner.LookupRequest{Store: r.Store, Key: r.Key})
		}
	}
	maybeGC(len(events))
	return out
}

// VisitedEntry is one entry of a visited keyed state.
type VisitedEntry struct {
	Key    []byte
	MapKey []byte // nil unless the state is a map
	Value  []byte
}

// VisitAction says what to do with a visited entry: Keep, SetValue(v) or Remove.
type VisitAction struct {
	tag   uint8
	value []byte
}

// Keep leaves the entry.
func Keep() VisitAction { return VisitAction{tag: eddy_plugin_keyed_visitor.VisitAction_Keep} }

// Remove deletes the entry.
func Remove() VisitAction { return VisitAction{tag: eddy_plugin_keyed_visitor.VisitAction_Remove} }

// SetValue replaces the entry's value (JSON bytes).
func SetValue(value []byte) VisitAction {
	return VisitAction{tag: eddy_plugin_keyed_visitor.VisitAction_Set, value: value}
}

// ExportVisit implements keyed-visitor.visit.
func ExportVisit(tag, state string, entries []eddy_plugin_keyed_visitor.VisitedEntry) []eddy_plugin_keyed_visitor.VisitAction {
	out := make([]eddy_plugin_keyed_visitor.VisitAction, len(entries))
	visitor, visits := registered.(Visitor)
	for i, e := range entries {
		action := Keep()
		if initialised && visits {
			var mapKey []byte
			if e.MapKey.IsSome() {
				mapKey = e.MapKey.Some()
			}
			action = visitor.Visit(tag, state, VisitedEntry{Key: e.Key, MapKey: mapKey, Value: e.Value})
		}
		switch action.tag {
		case eddy_plugin_keyed_visitor.VisitAction_Set:
			out[i] = eddy_plugin_keyed_visitor.MakeVisitActionSet(action.value)
		case eddy_plugin_keyed_visitor.VisitAction_Remove:
			out[i] = eddy_plugin_keyed_visitor.MakeVisitActionRemove()
		default:
			out[i] = eddy_plugin_keyed_visitor.MakeVisitActionKeep()
		}
	}
	maybeGC(len(entries))
	return out
}

// ExportMigrate implements migrator.migrate.
func ExportMigrate(previousVersion string) witTypes.Result[witTypes.Unit, string] {
	if !initialised {
		return fail(notInitialised)
	}
	if m, ok := registered.(Migrator); ok {
		if err := m.Migrate(previousVersion); err != nil {
			return fail(err.Error())
		}
	}
	return ok()
}
