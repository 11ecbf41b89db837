//! Bodies of `savepoint` control requests, which any NATS user allowed on `eddy.ctl.<P>.>`
//! sends: refused with a reason, or a savepoint name that is one plain directory name and a
//! progress subject that is literal.
#![no_main]

use std::path::{Component, Path};

use eddy_host::control::SavepointRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SavepointRequest::parse(data, 1_700_000_000_000) {
        Ok(ask) => {
            let parts: Vec<Component> = Path::new(&ask.name).components().collect();
            assert!(
                matches!(parts.as_slice(), [Component::Normal(n)] if *n == ask.name.as_str()),
                "name {:?} accepted",
                ask.name
            );
            assert!(!ask.name.starts_with('.'), "name {:?} accepted", ask.name);
            if let Some(subject) = &ask.progress {
                assert!(
                    !subject.is_empty()
                        && subject
                            .split('.')
                            .all(|t| !t.is_empty() && t != "*" && t != ">")
                        && !subject.chars().any(char::is_whitespace),
                    "progress subject {subject:?} accepted"
                );
            }
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
