//! Input events.

use serde::de::DeserializeOwned;

use crate::wit::eddy::plugin::types as wit;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    key: Vec<u8>,
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    timestamp_ms: u64,
    sequence: u64,
}

impl Event {
    /// An event with this key and payload, an empty subject, no headers, and timestamp and
    /// sequence 0. For tests.
    pub fn new(key: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> Self {
        Event {
            key: key.into(),
            payload: payload.into(),
            ..Event::default()
        }
    }

    /// Sets the subject. For tests.
    #[must_use]
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Adds a header. For tests.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the stream timestamp. For tests.
    #[must_use]
    pub fn with_timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the stream sequence number. For tests.
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
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

    /// The NATS subject the event was published on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// All NATS headers as `(name, value)` pairs, in message order. A name may repeat.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The value of the first header called `name`. Names are compared case-sensitively, as NATS
    /// does.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The message payload, as published.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes the payload as JSON into `T`.
    ///
    /// The error is serde_json's message, which says what failed and where (for example
    /// ``missing field `id` at line 1 column 20``); add your own context when you reject the
    /// event with it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.payload).map_err(|e| e.to_string())
    }

    /// When the input stream stored the message, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The input stream's sequence number of the message: unique and increasing per input.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl From<wit::Event> for Event {
    fn from(event: wit::Event) -> Self {
        Event {
            key: event.key,
            subject: event.subject,
            headers: event.headers,
            payload: event.payload,
            timestamp_ms: event.timestamp_ms,
            sequence: event.sequence,
        }
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
