//! Reads a YAML mapping section by section so that one bad key does not hide the next.
//!
//! serde stops at the first error of a document; reading each top-level key (and each list
//! item) on its own, with `serde_path_to_error` for the path below it, lets `visiond check`
//! report every problem of a file in one run. Inside a section the same holds: a key whose
//! value cannot be read is reported, a stand-in put in its place, and the section read again,
//! so that a wrong type never hides a wrong range beside it.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::error::{FileErrors, Unreadable};

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
    unreadable: &'e mut Unreadable,
}

impl<'e, 'f> Sections<'e, 'f> {
    pub fn new(
        mapping: Mapping,
        errors: &'e mut FileErrors<'f>,
        unreadable: &'e mut Unreadable,
    ) -> Self {
        Self {
            mapping,
            errors,
            unreadable,
        }
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
            Some(value) => self.decode(key, value),
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
            Some(value) => self.decode(key, value),
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
            .map(|(index, item)| self.decode(&format!("{key}[{index}]"), item))
            .collect()
    }

    /// Decodes `value` found at `key`, reporting every problem inside it (see [`decode`]).
    pub fn decode<T: DeserializeOwned>(&mut self, key: &str, value: Value) -> Option<T> {
        decode(key, value, self.errors, self.unreadable)
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

/// How many times one value is decoded again, at most, after taking a bad key out of it:
/// enough for every key of any real section to be wrong, and a bound on a hostile one.
const MAX_ATTEMPTS: usize = 256;

/// Decodes one value found at `prefix`, reporting each problem at `prefix` + the path serde
/// reached inside it.
///
/// serde stops at the first problem, so the key it names is given a stand-in (see
/// [`StandIn`]) and the value decoded again, until it decodes or the problem is one no
/// stand-in can fix (the value itself is of the wrong kind): then `None`, everything found
/// reported. A problem the stand-in itself causes (a required key now missing, an empty text
/// where a number goes) is not reported: the next stand-in is tried. Keys given a stand-in are
/// recorded in `unreadable`, so that later checks do not report the stand-in's value as if the
/// user had written it.
pub fn decode<T: DeserializeOwned>(
    prefix: &str,
    mut value: Value,
    errors: &mut FileErrors<'_>,
    unreadable: &mut Unreadable,
) -> Option<T> {
    let mut repairs: Vec<Repair> = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        let failure = match attempt::<T>(&value) {
            Ok(decoded) => return Some(decoded),
            Err(failure) => failure,
        };
        let Some(target) = failure.target() else {
            // Nowhere to put a stand-in: report it and leave the value unread.
            errors.push(joined(prefix, &failure.at), failure.message);
            return None;
        };
        // Ours when it is where a stand-in went, or above one (a key taken out of an enum's
        // mapping leaves that mapping unreadable).
        let ours = repairs.iter().position(|r| r.path.starts_with(&target));
        let repair = match ours {
            Some(index) if repairs[index].path == target => {
                repairs[index].tried += 1;
                index
            }
            Some(_) => {
                repairs.push(Repair::at(target));
                repairs.len() - 1
            }
            None => {
                unreadable.reported(errors.len());
                errors.push(joined(prefix, &failure.at), failure.message);
                repairs.push(Repair::at(target));
                repairs.len() - 1
            }
        };
        let repair = &mut repairs[repair];
        // The value itself cannot be replaced from inside: it stays unread.
        if repair.path.is_empty() {
            return None;
        }
        loop {
            let stand_in = StandIn::ORDER.get(repair.tried)?;
            if stand_in.put(&mut value, &repair.path) {
                break;
            }
            repair.tried += 1;
        }
        unreadable.stand_in(errors.file, joined(prefix, &render(&repair.path)));
    }
    None
}

/// `prefix` and a path inside its value, as keys are written in messages (`sinks[1].udp.port`).
fn joined(prefix: &str, inner: &str) -> String {
    if inner.is_empty() {
        prefix.to_string()
    } else if inner.starts_with('[') {
        format!("{prefix}{inner}")
    } else {
        format!("{prefix}.{inner}")
    }
}

/// One step into a YAML value: a mapping's key (a struct field, an enum's variant) or a list's
/// index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn render(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) if text.is_empty() => text.push_str(key),
            Step::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Step::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// Why a value did not decode: where serde stopped and what it said.
struct Failure {
    /// Where, as serde names it (`udp.port`, `range.fixed[1]`); empty for the value itself.
    at: String,
    /// The same place as steps; `None` where serde could not say.
    path: Option<Vec<Step>>,
    message: String,
}

impl Failure {
    /// The key a stand-in goes to: a required key that is missing, else the key serde stopped
    /// at (a list's item stands for the list); `None` when the path cannot be followed.
    fn target(&self) -> Option<Vec<Step>> {
        let mut path = self.path.clone()?;
        if let Some(field) = self
            .message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            path.push(Step::Key(field.to_string()));
        }
        while matches!(path.last(), Some(Step::Index(_))) {
            path.pop();
        }
        Some(path)
    }
}

/// One try at decoding `value` as a `T`.
fn attempt<T: DeserializeOwned>(value: &Value) -> Result<T, Failure> {
    // serde_yaml decodes `- rtsp: {...}` enums only from text, not from a `Value`, so the
    // section is written back to YAML first (cheap: config files are small).
    let text = serde_yaml::to_string(value).map_err(|error| Failure {
        at: String::new(),
        path: None,
        message: error.to_string(),
    })?;
    // Enums are written as one-key maps (`- file: {path: a.mp4}`, `range: {fixed: [0, 10]}`),
    // which serde_yaml 0.9 reads only through its singleton_map adapter.
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(
        serde_yaml::Deserializer::from_str(&text),
        &mut track,
    );
    serde_yaml::with::singleton_map_recursive::deserialize(tracked).map_err(|error| {
        let path = track.path();
        let steps = path
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Map { key }
                | serde_path_to_error::Segment::Enum { variant: key } => {
                    Some(Step::Key(key.clone()))
                }
                serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let at = match path.to_string() {
            inner if inner == "." => String::new(),
            inner => inner,
        };
        // serde_yaml already starts its message with the path inside the section, and ends
        // it with a line and column of the re-written text, which mean nothing to the user.
        let message = error.to_string();
        let message = strip_location(&message);
        let message = match message.split_once(": ") {
            Some((path, rest)) if !at.is_empty() && at.starts_with(path) => rest,
            _ => message,
        };
        Failure {
            at,
            path: steps,
            message: message.to_string(),
        }
    })
}

/// A key tried with stand-ins, and how many have been tried.
struct Repair {
    path: Vec<Step>,
    tried: usize,
}

impl Repair {
    fn at(path: Vec<Step>) -> Self {
        Self { path, tried: 0 }
    }
}

/// What replaces a value that cannot be read.
#[derive(Debug, Clone, Copy)]
enum StandIn {
    /// Nothing: the key takes its default.
    Absent,
    /// A required text, path or name.
    Text,
    /// A required number.
    Zero,
}

impl StandIn {
    const ORDER: [StandIn; 3] = [StandIn::Absent, StandIn::Text, StandIn::Zero];

    /// Puts the stand-in at `path` (a key) inside `value`; `false` when that changes nothing
    /// (an absent key taken out) or the path leads nowhere.
    fn put(self, value: &mut Value, path: &[Step]) -> bool {
        let Some((Step::Key(key), parent)) = path.split_last() else {
            return false;
        };
        let mut here = value;
        for step in parent {
            let next = match (step, here) {
                (Step::Key(key), Value::Mapping(mapping)) => mapping.get_mut(key.as_str()),
                (Step::Index(index), Value::Sequence(items)) => items.get_mut(*index),
                _ => None,
            };
            let Some(next) = next else {
                return false;
            };
            here = next;
        }
        let Value::Mapping(mapping) = here else {
            return false;
        };
        match self {
            Self::Absent => mapping.remove(key.as_str()).is_some(),
            Self::Text => {
                mapping.insert(Value::from(key.as_str()), Value::from(""));
                true
            }
            Self::Zero => {
                mapping.insert(Value::from(key.as_str()), Value::from(0));
                true
            }
        }
    }
}
