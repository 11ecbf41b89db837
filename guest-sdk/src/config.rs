//! The plugin configuration handed to [`Processor::init`](crate::Processor::init).

use serde::de::DeserializeOwned;

/// The pipeline's `plugin.config`, as the JSON text the host passed to `init`.
///
/// The host sends `{}` when the pipeline sets no configuration; an empty text is treated the same
/// way. Decode it into your own settings type with [`parse`](Config::parse), or read single
/// members with [`get`](Config::get).
///
/// ```
/// use eddy_sdk::Config;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Settings {
///     #[serde(default = "seventy")]
///     flag_threshold: u32,
/// }
///
/// fn seventy() -> u32 {
///     70
/// }
///
/// let config = Config::new(r#"{"flag_threshold": 80, "limits": {"max": 5}}"#);
/// let settings: Settings = config.parse()?;
/// assert_eq!(settings.flag_threshold, 80);
/// assert_eq!(config.get::<u32>("/limits/max")?, Some(5));
/// assert_eq!(config.get::<u32>("/limits/min")?, None);
///
/// let defaults: Settings = Config::new("{}").parse()?;
/// assert_eq!(defaults.flag_threshold, 70);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    raw: String,
}

impl Config {
    /// Wraps configuration text. The host does this for you; use it in tests.
    pub fn new(raw: impl Into<String>) -> Self {
        Config { raw: raw.into() }
    }

    /// The configuration text exactly as the host passed it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The text to decode: `{}` when the configuration is empty.
    fn json_text(&self) -> &str {
        if self.raw.trim().is_empty() {
            "{}"
        } else {
            &self.raw
        }
    }

    /// Decodes the whole configuration into `T`.
    ///
    /// The error says what failed and where, for example
    /// ``invalid plugin config: invalid type: string "x", expected u32 at line 1 column 23``,
    /// ready to be returned from [`Processor::init`](crate::Processor::init).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(self.json_text()).map_err(|e| format!("invalid plugin config: {e}"))
    }

    /// Decodes one member of the configuration, named by a JSON pointer (RFC 6901) such as
    /// `/limits/max`; the empty pointer `""` is the whole configuration.
    ///
    /// Returns `Ok(None)` when the member is absent or `null`, and an error naming the pointer
    /// when the configuration is not JSON or the member does not decode as `T`.
    pub fn get<T: DeserializeOwned>(&self, pointer: &str) -> Result<Option<T>, String> {
        let root: serde_json::Value = serde_json::from_str(self.json_text())
            .map_err(|e| format!("invalid plugin config: {e}"))?;
        match root.pointer(pointer) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| format!("invalid plugin config at `{pointer}`: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Settings {
        threshold: u32,
        #[serde(default)]
        name: Option<String>,
    }

    #[test]
    fn parses_the_whole_config() {
        let config = Config::new(r#"{"threshold": 7, "name": "x"}"#);
        assert_eq!(config.raw(), r#"{"threshold": 7, "name": "x"}"#);
        assert_eq!(
            config.parse::<Settings>(),
            Ok(Settings {
                threshold: 7,
                name: Some("x".to_owned())
            })
        );
    }

    #[test]
    fn parse_errors_say_what_failed() {
        let err = Config::new(r#"{"threshold": "high"}"#)
            .parse::<Settings>()
            .expect_err("a string is not a u32");
        assert!(
            err.starts_with("invalid plugin config: invalid type: string"),
            "{err}"
        );
        let err = Config::new("{}")
            .parse::<Settings>()
            .expect_err("threshold is required");
        assert!(err.contains("missing field `threshold`"), "{err}");
        let err = Config::new("{oops")
            .parse::<Settings>()
            .expect_err("not JSON");
        assert!(err.starts_with("invalid plugin config: "), "{err}");
    }

    #[test]
    fn empty_config_is_an_empty_object() {
        #[derive(Debug, Deserialize, PartialEq, Default)]
        struct Nothing {}
        assert_eq!(Config::new("").parse::<Nothing>(), Ok(Nothing {}));
        assert_eq!(Config::new("  \n").get::<u32>("/x"), Ok(None));
    }

    #[test]
    fn get_reads_members_by_pointer() {
        let config = Config::new(r#"{"a": {"b": [10, 20]}, "n": null, "s": "t"}"#);
        assert_eq!(config.get::<u32>("/a/b/1"), Ok(Some(20)));
        assert_eq!(config.get::<Vec<u32>>("/a/b"), Ok(Some(vec![10, 20])));
        assert_eq!(config.get::<u32>("/missing"), Ok(None));
        assert_eq!(config.get::<u32>("/n"), Ok(None));
        let err = config.get::<u32>("/s").expect_err("a string is not a u32");
        assert!(err.starts_with("invalid plugin config at `/s`: "), "{err}");
        assert!(Config::new("[").get::<u32>("/x").is_err());
    }
}
