//! What becomes of an event: [`Outcome`] and the messages it publishes, [`Output`].

use serde::Serialize;

use crate::wit::eddy::plugin::types as wit;
use crate::wit::exports::eddy::plugin::packed_handler as packed;

/// What became of one event. [`Processor::process`](crate::Processor::process) returns exactly
/// one per event.
///
/// ```
/// use eddy_sdk::{Outcome, Output};
///
/// // Publish one message to the pipeline's default output subject.
/// let one = Outcome::emit_one(Output::new("hello"));
/// // Publish several (or none: an empty `emit` publishes nothing but still counts as handled).
/// let two = Outcome::emit([Output::new("a"), Output::new("b").subject("audit.events")]);
/// // Publish a value as JSON; a value that cannot be encoded rejects the event instead.
/// let json = Outcome::emit_json(&serde_json::json!({"ok": true}));
/// assert_eq!(json, Outcome::emit_one(Output::new(r#"{"ok":true}"#)));
/// // Filter the event out on purpose.
/// let dropped = Outcome::drop();
/// assert_eq!(dropped, Outcome::Drop);
/// // Send the event to the dead-letter subject, with the reason in its `Eddy-Error` header.
/// let rejected = Outcome::reject("payload is not a transaction");
/// assert!(rejected.is_reject());
/// # let _ = (one, two);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Publish these messages (possibly none) for the event.
    Emit(Vec<Output>),
    /// The event was filtered out on purpose: counted as dropped, nothing is published.
    Drop,
    /// The plugin cannot handle the event. The host publishes it to the pipeline's dead-letter
    /// subject with this reason in the `Eddy-Error` header, and carries on.
    Reject(String),
}

impl Outcome {
    /// Publish these messages.
    pub fn emit(outputs: impl IntoIterator<Item = Output>) -> Self {
        Outcome::Emit(outputs.into_iter().collect())
    }

    /// Publish one message.
    pub fn emit_one(output: Output) -> Self {
        Outcome::Emit(vec![output])
    }

    /// Publish `value` encoded as JSON to the default subject, or reject the event if it cannot
    /// be encoded (see [`Output::json`]).
    pub fn emit_json<T: Serialize + ?Sized>(value: &T) -> Self {
        match Output::json(value) {
            Ok(output) => Outcome::emit_one(output),
            Err(reason) => Outcome::Reject(reason),
        }
    }

    /// Drop the event on purpose: the same as [`Outcome::Drop`].
    pub fn drop() -> Self {
        Outcome::Drop
    }

    /// Reject the event to the dead-letter subject with this reason.
    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::Reject(reason.into())
    }

    /// Whether this is [`Outcome::Emit`].
    pub fn is_emit(&self) -> bool {
        matches!(self, Outcome::Emit(_))
    }

    /// Whether this is [`Outcome::Drop`].
    pub fn is_drop(&self) -> bool {
        matches!(self, Outcome::Drop)
    }

    /// Whether this is [`Outcome::Reject`].
    pub fn is_reject(&self) -> bool {
        matches!(self, Outcome::Reject(_))
    }
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Outcome::emit_one(output)
    }
}

impl From<Outcome> for wit::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Emit(outputs) => {
                wit::Outcome::Emit(outputs.into_iter().map(wit::Output::from).collect())
            }
            Outcome::Drop => wit::Outcome::Drop,
            Outcome::Reject(reason) => wit::Outcome::Reject(reason),
        }
    }
}

impl Outcome {
    /// Appends this outcome to a batch's packed outcomes (see `wit/eddy.wit`).
    pub(crate) fn pack_into(self, p: &mut packed::PackedOutcomes) {
        fn piece(p: &mut packed::PackedOutcomes, bytes: &[u8]) {
            p.bytes.extend_from_slice(bytes);
            // Within a wasm32 memory.
            p.ends.push(p.bytes.len() as u32);
        }
        match self {
            Outcome::Emit(outputs) => {
                p.outcomes
                    .push(packed::PackedOutcome::Emit(outputs.len() as u32));
                for output in outputs {
                    p.outputs.push(packed::PackedOutput {
                        has_subject: output.subject.is_some(),
                        headers: output.headers.len() as u32,
                    });
                    if let Some(subject) = &output.subject {
                        piece(p, subject.as_bytes());
                    }
                    for (name, value) in &output.headers {
                        piece(p, name.as_bytes());
                        piece(p, value.as_bytes());
                    }
                    piece(p, &output.payload);
                }
            }
            Outcome::Drop => p.outcomes.push(packed::PackedOutcome::Drop),
            Outcome::Reject(reason) => {
                p.outcomes.push(packed::PackedOutcome::Reject);
                piece(p, reason.as_bytes());
            }
        }
    }
}

/// One message for the host to publish.
///
/// The host adds its own `Eddy-*` headers and `Nats-Msg-Id`. Without [`subject`](Output::subject)
/// the message goes to the pipeline's default output subject; a subject that the pipeline does
/// not allow sends the event to the dead-letter subject.
///
/// ```
/// use eddy_sdk::Output;
///
/// let output = Output::new(b"raw bytes".to_vec())
///     .subject("alerts.fraud")
///     .header("Eddy-Risk", "90")
///     .header("Trace-Id", "abc");
/// assert_eq!(output.payload(), b"raw bytes");
/// assert_eq!(output.destination(), Some("alerts.fraud"));
/// assert_eq!(output.headers()[0], ("Eddy-Risk".to_owned(), "90".to_owned()));
///
/// #[derive(serde::Serialize)]
/// struct Alert<'a> {
///     id: &'a str,
///     risk: u8,
/// }
/// let alert = Output::json(&Alert { id: "tx-1", risk: 90 })?;
/// assert_eq!(alert.payload(), br#"{"id":"tx-1","risk":90}"#);
/// assert_eq!(alert.destination(), None);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    subject: Option<String>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl Output {
    /// A message with this payload, for the default subject, with no headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Output {
            subject: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// A message whose payload is `value` encoded as compact JSON.
    ///
    /// Fails (with serde_json's message, prefixed by `cannot encode output as JSON: `) only for
    /// values JSON cannot represent, such as a map with non-string keys.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, String> {
        serde_json::to_vec(value)
            .map(Output::new)
            .map_err(|e| format!("cannot encode output as JSON: {e}"))
    }

    /// Publishes to `subject` instead of the pipeline's default output subject.
    #[must_use]
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Adds a header. A name may be added more than once.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The subject set with [`subject`](Output::subject); `None` means the default subject.
    pub fn destination(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The headers added with [`header`](Output::header), in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl From<Output> for wit::Output {
    fn from(output: Output) -> Self {
        wit::Output {
            subject: output.subject,
            headers: output.headers,
            payload: output.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, Output};
    use crate::wit::eddy::plugin::types as wit;
    use std::collections::BTreeMap;

    #[test]
    fn output_builder() {
        let output = Output::new("p")
            .subject("s.t")
            .header("A", "1")
            .header("A", "2");
        assert_eq!(output.payload(), b"p");
        assert_eq!(output.destination(), Some("s.t"));
        assert_eq!(
            output.headers(),
            &[
                ("A".to_owned(), "1".to_owned()),
                ("A".to_owned(), "2".to_owned())
            ]
        );
        let plain = Output::new(vec![1u8, 2]);
        assert_eq!(plain.destination(), None);
        assert!(plain.headers().is_empty());
    }

    #[test]
    fn output_json() {
        let output = Output::json(&serde_json::json!({"b": 1, "a": [true, null]}))
            .expect("a JSON value encodes");
        assert_eq!(output.payload(), br#"{"a":[true,null],"b":1}"#);

        let mut bad = BTreeMap::new();
        bad.insert(vec![1u8], 1u8);
        let err = Output::json(&bad).expect_err("byte-vector keys are not JSON");
        assert!(err.starts_with("cannot encode output as JSON: "), "{err}");
        let outcome = Outcome::emit_json(&bad);
        assert!(outcome.is_reject());
    }

    #[test]
    fn outcome_constructors() {
        assert_eq!(
            Outcome::emit([Output::new("a"), Output::new("b")]),
            Outcome::Emit(vec![Output::new("a"), Output::new("b")])
        );
        assert_eq!(Outcome::emit(Vec::new()), Outcome::Emit(Vec::new()));
        assert_eq!(
            Outcome::emit_one(Output::new("a")),
            Outcome::from(Output::new("a"))
        );
        assert_eq!(Outcome::drop(), Outcome::Drop);
        assert_eq!(Outcome::reject("why"), Outcome::Reject("why".to_owned()));
        assert!(Outcome::drop().is_drop());
        assert!(Outcome::emit_one(Output::new("")).is_emit());
        assert!(!Outcome::drop().is_reject());
    }

    #[test]
    fn converts_to_wit() {
        let outcome: wit::Outcome =
            Outcome::emit_one(Output::new("x").subject("s").header("h", "v")).into();
        match outcome {
            wit::Outcome::Emit(outputs) => {
                assert_eq!(outputs.len(), 1);
                assert_eq!(outputs[0].subject.as_deref(), Some("s"));
                assert_eq!(outputs[0].headers, vec![("h".to_owned(), "v".to_owned())]);
                assert_eq!(outputs[0].payload, b"x");
            }
            other => panic!("expected emit, got {other:?}"),
        }
        assert!(matches!(
            wit::Outcome::from(Outcome::Drop),
            wit::Outcome::Drop
        ));
        assert!(matches!(
            wit::Outcome::from(Outcome::reject("r")),
            wit::Outcome::Reject(r) if r == "r"
        ));
    }
}
