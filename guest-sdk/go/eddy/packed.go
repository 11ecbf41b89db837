package eddy

// Packed batches (0.2.2): keyed batches cross as flat lists (`packed-handler` in eddy.wit),
// which the host lowers with three allocations in the plugin instead of several per event.

import (
	packed "wit_component/eddy_plugin_packed_handler"
)

// pieces reads the variable-length pieces of a packed batch in order.
type pieces struct {
	bytes []byte
	ends  []uint32
	next  int
	start uint32
}

// take is the next piece; empty past the last one or for an end outside the bytes (the host
// sends neither).
func (p *pieces) take() []byte {
	if p.next >= len(p.ends) {
		return nil
	}
	end := p.ends[p.next]
	if end < p.start || int(end) > len(p.bytes) {
		p.next = len(p.ends)
		return nil
	}
	b := p.bytes[p.start:end:end]
	p.start = end
	p.next++
	return b
}

// putPiece appends one piece (bytes or text) to the outcomes.
func putPiece[T string | []byte](out *packed.PackedOutcomes, b T) {
	out.Bytes = append(out.Bytes, b...)
	out.Ends = append(out.Ends, uint32(len(out.Bytes)))
}

// pack appends the outcome's pieces and outputs to out and returns its entry.
func (o Outcome) pack(out *packed.PackedOutcomes) packed.PackedOutcome {
	switch o.kind {
	case kindDrop:
		return packed.MakePackedOutcomeDrop()
	case kindReject:
		putPiece(out, o.reason)
		return packed.MakePackedOutcomeReject()
	}
	for _, output := range o.outputs {
		out.Outputs = append(out.Outputs, packed.PackedOutput{
			HasSubject: output.Subject != nil,
			Headers:    uint32(len(output.Headers)),
		})
		if output.Subject != nil {
			putPiece(out, *output.Subject)
		}
		for _, h := range output.Headers {
			putPiece(out, h.Name)
			putPiece(out, h.Value)
		}
		putPiece(out, output.Payload)
	}
	return packed.MakePackedOutcomeEmit(uint32(len(o.outputs)))
}

// ExportHandlePacked implements packed-handler.handle-packed: ExportHandle with the events
// read from flat lists and the outcomes written to them.
func ExportHandlePacked(events packed.PackedEvents) packed.PackedOutcomes {
	in := pieces{bytes: events.Bytes, ends: events.Ends}
	out := packed.PackedOutcomes{Outcomes: make([]packed.PackedOutcome, len(events.Events))}
	for i := range events.Events {
		pe := &events.Events[i]
		ev := Event{Key: in.take(), Subject: string(in.take()), TimestampMs: pe.TimestampMs, Sequence: pe.Sequence}
		if pe.Headers > 0 {
			ev.Headers = make([]Header, pe.Headers)
			for j := range ev.Headers {
				ev.Headers[j] = Header{Name: string(in.take()), Value: string(in.take())}
			}
		}
		ev.Payload = in.take()
		if !initialised {
			out.Outcomes[i] = Reject(notInitialised).pack(&out)
			continue
		}
		currentEvent = int64(i)
		outcome := registered.Process(&ev)
		currentEvent = -1
		out.Outcomes[i] = outcome.pack(&out)
	}
	finishBatch()
	forgetBatchReads()
	maybeGC(len(events.Events))
	return out
}
