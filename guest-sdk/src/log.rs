//! Logging into the host's log, tagged with the pipeline and the plugin.
//!
//! Each level has a function taking a message and a macro taking `format!` arguments:
//!
//! ```no_run
//! use eddy_sdk::log;
//!
//! log::info("started");
//! let id = "tx-1";
//! log::warn!("transaction {id} has no merchant");
//! log::debug!("{} events so far", 42);
//! ```
//!
//! Logging is a call into the host: keep it off the per-event hot path at `info` and above.
//! Outside the host (in native tests) these functions panic.

use crate::wit::eddy::plugin::log as wit;

/// Writes a record at `trace` level.
pub fn trace(message: &str) {
    wit::log(wit::Level::Trace, message);
}

/// Writes a record at `debug` level.
pub fn debug(message: &str) {
    wit::log(wit::Level::Debug, message);
}

/// Writes a record at `info` level.
pub fn info(message: &str) {
    wit::log(wit::Level::Info, message);
}

/// Writes a record at `warn` level.
pub fn warn(message: &str) {
    wit::log(wit::Level::Warn, message);
}

/// Writes a record at `error` level.
pub fn error(message: &str) {
    wit::log(wit::Level::Error, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __eddy_log_trace {
    ($($arg:tt)+) => {
        $crate::log::trace(&::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __eddy_log_debug {
    ($($arg:tt)+) => {
        $crate::log::debug(&::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __eddy_log_info {
    ($($arg:tt)+) => {
        $crate::log::info(&::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __eddy_log_warn {
    ($($arg:tt)+) => {
        $crate::log::warn(&::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __eddy_log_error {
    ($($arg:tt)+) => {
        $crate::log::error(&::std::format!($($arg)+))
    };
}

/// Writes a record at `trace` level, formatted like [`format!`].
///
/// ```no_run
/// eddy_sdk::log::trace!("key {:?}", b"c-42");
/// ```
#[doc(inline)]
pub use crate::__eddy_log_trace as trace;

/// Writes a record at `debug` level, formatted like [`format!`].
///
/// ```no_run
/// let n = 3;
/// eddy_sdk::log::debug!("{n} entries");
/// ```
#[doc(inline)]
pub use crate::__eddy_log_debug as debug;

/// Writes a record at `info` level, formatted like [`format!`].
///
/// ```no_run
/// eddy_sdk::log::info!("threshold is {}", 70);
/// ```
#[doc(inline)]
pub use crate::__eddy_log_info as info;

/// Writes a record at `warn` level, formatted like [`format!`].
///
/// ```no_run
/// let id = "tx-1";
/// eddy_sdk::log::warn!("duplicate transaction {id}");
/// ```
#[doc(inline)]
pub use crate::__eddy_log_warn as warn;

/// Writes a record at `error` level, formatted like [`format!`].
///
/// ```no_run
/// let e = "disk full";
/// eddy_sdk::log::error!("state write failed: {e}");
/// ```
#[doc(inline)]
pub use crate::__eddy_log_error as error;
