//! Reads a YAML mapping section by section so that one bad key does not hide the next.
//!
//! serde stops at the first error of a document; reading each top-level key (and each list
//! item) on its own, with `serde_path_to_error` for the path below it, lets `visiond check`
//! report every problem of a file in one run.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::error::FileErrors;

/// Parses YAML text into a top-level mapping; syntax errors carry line and column.
pub fn parse_mapping(text: &str, errors: &mut FileErrors<'_>) -> Option<Mapping> {
    let (depth, line) = super::limits::nesting(text);
    if depth > super::limits::MAX_NESTING {
        errors.push(
            "",
            format!(
                "nesting too deep: {depth} levels by line {line}; at most {} are allowed",
                super::limits::MAX_NESTING
            ),
        );
        return None;
    }
    let value: Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(error) => {
            let message = match error.location() {
                Some(at) => format!(
                    "YAML syntax error at line {} column {}: {}",
                    at.line(),
                    at.column(),
                    strip_location(&error.to_string())
                ),
                None => format!("YAML syntax error: {error}"),
            };
            errors.push("", message);
            return None;
        }
    };
    match value {
        Value::Mapping(mapping) => Some(mapping),
        Value::Null => {
            errors.push("", "file is empty; expected a mapping of settings");
            None
        }
        other => {
            errors.push(
                "",
                format!(
                    "expected a mapping of settings at the top level, found {}",
                    describe(&other)
                ),
            );
            None
        }
    }
}

/// serde_yaml appends " at line L column C" itself; we print the location first instead.
fn strip_location(message: &str) -> &str {
    message
        .find(" at line ")
        .map_or(message, |index| &message[..index])
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// One top-level mapping being read; reports unknown keys when finished.
pub struct Sections<'e, 'f> {
    mapping: Mapping,
    errors: &'e mut FileErrors<'f>,
}

impl<'e, 'f> Sections<'e, 'f> {
    pub fn new(mapping: Mapping, errors: &'e mut FileErrors<'f>) -> Self {
        Self { mapping, errors }
    }

    pub fn errors(&mut self) -> &mut FileErrors<'f> {
        self.errors
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.mapping.remove(key)
    }

    /// A key that must be present.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        match self.take(key) {
            Some(value) => decode(key, value, self.errors),
            None => {
                self.errors.push(key, "required key is missing");
                None
            }
        }
    }

    /// A key with a default; `None` only when it is present but invalid (already reported).
    pub fn optional<T: DeserializeOwned + Default>(&mut self, key: &str) -> Option<T> {
        match self.take(key) {
            Some(Value::Null) | None => Some(T::default()),
            Some(value) => decode(key, value, self.errors),
        }
    }

    /// A list whose items are decoded one by one, so each bad item is reported separately.
    /// Invalid items are `None`, keeping the indices of the rest as written.
    pub fn list<T: DeserializeOwned>(&mut self, key: &str) -> Vec<Option<T>> {
        let items = match self.take(key) {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                self.errors
                    .push(key, format!("expected a list, found {}", describe(&other)));
                return Vec::new();
            }
        };
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| decode(&format!("{key}[{index}]"), item, self.errors))
            .collect()
    }

    /// Reports every key nobody asked for, with the keys that exist.
    pub fn finish(self, known: &[&str]) {
        for key in self.mapping.keys() {
            let name = match key {
                Value::String(name) => name.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            self.errors.push(
                name.as_str(),
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
        }
    }
}

/// Decodes one value, reporting the error at `prefix` + the path serde reached inside it.
pub fn decode<T: DeserializeOwned>(
    prefix: &str,
    value: Value,
    errors: &mut FileErrors<'_>,
) -> Option<T> {
    // serde_yaml decodes `- rtsp: {...}` enums only from text, not from a `Value`, so the
    // section is written back to YAML first (cheap: config files are small).
    let text = match serde_yaml::to_string(&value) {
        Ok(text) => text,
        Err(error) => {
            errors.push(prefix, error.to_string());
            return None;
        }
    };
    // Enums are written as one-key maps (`- file: {path: a.mp4}`, `range: {fixed: [0, 10]}`),
    // which serde_yaml 0.9 reads only through its singleton_map adapter.
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(
        serde_yaml::Deserializer::from_str(&text),
        &mut track,
    );
    match serde_yaml::with::singleton_map_recursive::deserialize(tracked) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            let inner = track.path().to_string();
            let key = if inner == "." || inner.is_empty() {
                prefix.to_string()
            } else if inner.starts_with('[') {
                format!("{prefix}{inner}")
            } else {
                format!("{prefix}.{inner}")
            };
            // serde_yaml already starts its message with the path inside the section.
            let message = error.to_string();
            let message = strip_location(&message);
            let message = match message.split_once(": ") {
                Some((path, rest)) if inner.starts_with(path) => rest,
                _ => message,
            };
            errors.push(key, message.to_string());
            None
        }
    }
}
