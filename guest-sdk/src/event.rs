//! Input events, and the message fields they share with broadcast events.

use crate::wit::eddy::plugin::types as wit;
use crate::wit::exports::eddy::plugin::packed_handler as packed;

/// What an [`Event`] and a [`BroadcastEvent`](crate::BroadcastEvent) both carry: a NATS message
/// as its stream stored it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) subject: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
    pub(crate) timestamp_ms: u64,
    pub(crate) sequence: u64,
}

/// Gives `$event`, a struct with the field `$origin` (where the event comes from: its key or
/// its input) and a `message: Message`, the accessors and test builders of both kinds of event,
/// and a `Debug` that shows every field flat. A macro rather than a trait, so that they are
/// inherent methods: a plugin calls them without importing anything.
macro_rules! message_accessors {
    ($event:ident, $origin:ident) => {
        impl $event {
            /// Sets the subject. For tests.
            #[must_use]
            pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
                self.message.subject = subject.into();
                self
            }

            /// Adds a header. For tests.
            #[must_use]
            pub fn with_header(
                mut self,
                name: impl Into<String>,
                value: impl Into<String>,
            ) -> Self {
                self.message.headers.push((name.into(), value.into()));
                self
            }

            /// The NATS subject the event was published on.
            pub fn subject(&self) -> &str {
                &self.message.subject
            }

            /// All NATS headers as `(name, value)` pairs, in message order. A name may repeat.
            pub fn headers(&self) -> &[(String, String)] {
                &self.message.headers
            }

            /// The value of the first header called `name`. Names are compared
            /// case-sensitively, as NATS does.
            pub fn header(&self, name: &str) -> Option<&str> {
                self.message
                    .headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            }

            /// The message payload, as published.
            pub fn payload(&self) -> &[u8] {
                &self.message.payload
            }

            /// Decodes the payload as JSON into `T`.
            ///
            /// The error is serde_json's message, which says what failed and where (for example
            /// ``missing field `id` at line 1 column 20``); add your own context when you
            /// reject the event with it.
            pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
                serde_json::from_slice(&self.message.payload).map_err(|e| e.to_string())
            }

            /// When the stream stored the message, in milliseconds since the Unix epoch.
            pub fn timestamp_ms(&self) -> u64 {
                self.message.timestamp_ms
            }

            /// The stream's sequence number of the message: unique and increasing per input.
            pub fn sequence(&self) -> u64 {
                self.message.sequence
            }
        }

        impl std::fmt::Debug for $event {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let m = &self.message;
                f.debug_struct(stringify!($event))
                    .field(stringify!($origin), &self.$origin)
                    .field("subject", &m.subject)
                    .field("headers", &m.headers)
                    .field("payload", &m.payload)
                    .field("timestamp_ms", &m.timestamp_ms)
                    .field("sequence", &m.sequence)
                    .finish()
            }
        }
    };
}
pub(crate) use message_accessors;

/// One input event: a NATS message and the key the host extracted from it.
///
/// The host builds events; [`Event::new`] and the `with_*` methods exist for tests.
///
/// ```
/// use eddy_sdk::Event;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Tx {
///     id: String,
///     amount_cents: u64,
/// }
///
/// let event = Event::new("c-42", r#"{"id": "tx-1", "amount_cents": 1250}"#)
///     .with_subject("payments.eu")
///     .with_header("Trace-Id", "abc")
///     .with_timestamp_ms(1_700_000_000_000)
///     .with_sequence(7);
///
/// assert_eq!(event.key_str(), Some("c-42"));
/// assert_eq!(event.subject(), "payments.eu");
/// assert_eq!(event.header("Trace-Id"), Some("abc"));
/// assert_eq!(event.header("trace-id"), None); // names are case-sensitive, as in NATS
/// let tx: Tx = event.json()?;
/// assert_eq!((tx.id.as_str(), tx.amount_cents), ("tx-1", 1250));
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Event {
    key: Vec<u8>,
    message: Message,
}

message_accessors!(Event, key);

impl Event {
    /// An event with this key and payload, an empty subject, no headers, and timestamp and
    /// sequence 0. For tests.
    pub fn new(key: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> Self {
        Event {
            key: key.into(),
            message: Message {
                payload: payload.into(),
                ..Message::default()
            },
        }
    }

    /// Sets the stream timestamp. For tests.
    #[must_use]
    pub fn with_timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.message.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the stream sequence number. For tests.
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.message.sequence = sequence;
        self
    }

    /// The event's key, extracted by the host as the pipeline says (a header, a subject token or
    /// a JSON pointer into the payload). Keyed state is partitioned by it.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key as text, if it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }
}

impl From<wit::Event> for Event {
    fn from(event: wit::Event) -> Self {
        Event {
            key: event.key,
            message: Message {
                subject: event.subject,
                headers: event.headers,
                payload: event.payload,
                timestamp_ms: event.timestamp_ms,
                sequence: event.sequence,
            },
        }
    }
}

/// Reads the events of a `packed-events` batch (see `wit/eddy.wit`) one at a time into an
/// [`Event`] reused from one to the next, so a batch costs no allocation per event once the
/// event's buffers have grown to its largest fields.
pub(crate) struct Unpacker<'a> {
    bytes: &'a [u8],
    ends: std::slice::Iter<'a, u32>,
    start: usize,
}

/// Why a packed batch could not be read: the host broke the contract.
const MALFORMED: &str = "eddy: the host passed a malformed packed batch (its `ends` do not fit its `bytes`); the host and the SDK disagree on wit/eddy.wit";

impl<'a> Unpacker<'a> {
    pub(crate) fn new(batch: &'a packed::PackedEvents) -> Self {
        Unpacker {
            bytes: &batch.bytes,
            ends: batch.ends.iter(),
            start: 0,
        }
    }

    fn piece(&mut self) -> &'a [u8] {
        let end = self.ends.next().map(|e| *e as usize);
        let piece = end
            .and_then(|end| self.bytes.get(self.start..end))
            .expect(MALFORMED);
        self.start += piece.len();
        piece
    }

    fn text(&mut self, into: &mut String) {
        into.clear();
        let piece = self.piece();
        // The host sends valid UTF-8 (subjects and headers are NATS text): checking it is
        // cheaper than `from_utf8_lossy`'s walk over chunks, which only bad bytes need.
        match std::str::from_utf8(piece) {
            Ok(text) => into.push_str(text),
            Err(_) => into.push_str(&String::from_utf8_lossy(piece)),
        }
    }

    /// Overwrites `event` with the next event of the batch, whose fixed fields are `meta`.
    pub(crate) fn next_into(&mut self, event: &mut Event, meta: &packed::PackedEvent) {
        event.key.clear();
        event.key.extend_from_slice(self.piece());
        let m = &mut event.message;
        self.text(&mut m.subject);
        m.headers
            .resize_with(meta.headers as usize, Default::default);
        for (name, value) in &mut m.headers {
            self.text(name);
            self.text(value);
        }
        m.payload.clear();
        m.payload.extend_from_slice(self.piece());
        m.timestamp_ms = meta.timestamp_ms;
        m.sequence = meta.sequence;
    }
}

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn accessors() {
        let event = Event::new(vec![0xff, 0x00], "{}")
            .with_subject("a.b")
            .with_header("X", "1")
            .with_header("X", "2")
            .with_header("x", "3")
            .with_timestamp_ms(5)
            .with_sequence(6);
        assert_eq!(event.key(), &[0xff, 0x00]);
        assert_eq!(event.key_str(), None);
        assert_eq!(event.subject(), "a.b");
        assert_eq!(event.headers().len(), 3);
        assert_eq!(event.header("X"), Some("1"));
        assert_eq!(event.header("x"), Some("3"));
        assert_eq!(event.header("Y"), None);
        assert_eq!(event.payload(), b"{}");
        assert_eq!(event.timestamp_ms(), 5);
        assert_eq!(event.sequence(), 6);
    }

    #[test]
    fn both_kinds_of_event_share_the_message_accessors_and_debug_flat() {
        let event = Event::new("k", "p")
            .with_subject("a.b")
            .with_header("X", "1");
        assert_eq!(
            format!("{event:?}"),
            r#"Event { key: [107], subject: "a.b", headers: [("X", "1")], payload: [112], timestamp_ms: 0, sequence: 0 }"#
        );
        let broadcast = crate::BroadcastEvent::new("rules", "p")
            .with_subject("a.b")
            .with_header("X", "1");
        assert_eq!(
            (
                broadcast.input(),
                broadcast.subject(),
                broadcast.header("X")
            ),
            ("rules", "a.b", Some("1"))
        );
        assert_eq!(
            broadcast.json::<String>(),
            Err("expected value at line 1 column 1".to_owned())
        );
        assert_eq!(
            format!("{broadcast:?}"),
            r#"BroadcastEvent { input: "rules", subject: "a.b", headers: [("X", "1")], payload: [112], timestamp_ms: 0, sequence: 0 }"#
        );
    }

    #[test]
    fn json_errors_carry_serde_message() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Tx {
            id: String,
        }
        let err = Event::new("k", "{}")
            .json::<Tx>()
            .expect_err("id is missing");
        assert_eq!(err, "missing field `id` at line 1 column 2");
        assert!(Event::new("k", "nope").json::<Tx>().is_err());
    }
}
