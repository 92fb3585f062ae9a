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

/// How many times one value is read again, at most, after a stand-in was put in it, and how
/// many bytes of it are read in all: enough for every key of any real section to be wrong (a
/// section is a few hundred bytes), and a bound on the time a hostile one takes (a section of
/// more than a quarter of a 1 MiB file is not read again).
const MAX_REREADS: usize = 64;
const MAX_REREAD_BYTES: usize = 256 * 1024;

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
    let (mut reads, mut read_bytes) = (0, 0);
    loop {
        reads += 1;
        let failure = match attempt::<T>(&value, &mut read_bytes) {
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
        if reads > MAX_REREADS || read_bytes > MAX_REREAD_BYTES {
            errors.push(
                prefix,
                "reading stopped here: the section is too large, or has too many problems, to list them all; fix these and check again",
            );
            return None;
        }
    }
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

/// One try at decoding `value` as a `T`; `read_bytes` counts what it read.
fn attempt<T: DeserializeOwned>(value: &Value, read_bytes: &mut usize) -> Result<T, Failure> {
    // serde_yaml decodes `- rtsp: {...}` enums only from text, not from a `Value`, so the
    // section is written back to YAML first (cheap: config files are small).
    let text = serde_yaml::to_string(value).map_err(|error| Failure {
        at: String::new(),
        path: None,
        message: error.to_string(),
    })?;
    *read_bytes += text.len();
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
            // Shifting keeps the written order, so problems are found in it.
            Self::Absent => mapping.shift_remove(key.as_str()).is_some(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, OverlayConfig, SinkConfig, UdpSink};

    /// Decodes `yaml` at `prefix`; the value, and every message (`key: message`) found.
    fn read<T: DeserializeOwned>(
        prefix: &str,
        yaml: &str,
    ) -> (Option<T>, Vec<String>, Vec<ConfigError>, Unreadable) {
        let mut found = Vec::new();
        let mut unreadable = Unreadable::default();
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        let decoded = decode(
            prefix,
            value,
            &mut FileErrors {
                file: "p.yaml",
                errors: &mut found,
            },
            &mut unreadable,
        );
        let messages = found
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        (decoded, messages, found, unreadable)
    }

    #[test]
    fn every_unreadable_key_is_reported_and_the_rest_of_the_section_read() {
        let (overlay, messages, ..) = read::<OverlayConfig>(
            "overlay",
            "{ alpha: 2, colormap: rainbow, smoothing_frames: often, top_k: 0, range: { fixed: [0, a] } }",
        );
        assert_eq!(
            messages,
            [
                "overlay.colormap: unknown variant `rainbow`, expected one of `turbo`, `inferno`, `magma`, `viridis`, `grayscale`",
                "overlay.smoothing_frames: invalid type: string \"often\", expected u32",
                "overlay.range.fixed[1]: invalid type: string \"a\", expected f64",
            ]
        );
        let overlay = overlay.expect("read with defaults in place of the unreadable keys");
        assert_eq!((overlay.alpha, overlay.top_k), (2.0, 0));
        assert_eq!(
            overlay,
            OverlayConfig {
                alpha: 2.0,
                top_k: 0,
                ..OverlayConfig::default()
            }
        );
    }

    #[test]
    fn a_required_key_gets_a_stand_in_whose_later_errors_are_dropped() {
        let (sink, messages, mut found, unreadable) =
            read::<SinkConfig>("sinks[0]", "{ udp: { host: cam, port: none } }");
        assert_eq!(
            messages,
            ["sinks[0].udp.port: invalid type: string \"none\", expected u16"]
        );
        assert_eq!(
            sink,
            Some(SinkConfig::Udp(UdpSink {
                host: "cam".into(),
                port: 0
            }))
        );
        // A check of the stand-in's value (0 is no port) is not the user's problem.
        let later = |key: &str| ConfigError {
            file: "p.yaml".into(),
            key: key.into(),
            message: "must be a port between 1 and 65535".into(),
        };
        found.push(later("sinks[0].udp.port"));
        found.push(later("sinks[1].udp.port"));
        unreadable.drop_stand_in_errors(&mut found);
        let keys: Vec<&str> = found.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["sinks[0].udp.port", "sinks[1].udp.port"]);
        assert_eq!(found[0].message, messages[0]["sinks[0].udp.port: ".len()..]);
        // A missing required key is reported where serde found it, and read with a stand-in.
        let (sink, messages, ..) = read::<SinkConfig>("sinks[0]", "{ file: { segment_s: 0 } }");
        assert_eq!(messages, ["sinks[0].file: missing field `path`"]);
        assert!(matches!(sink, Some(SinkConfig::File(f)) if f.segment_s == Some(0)));
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_reported_once_and_left_unread() {
        for (yaml, message) in [
            (
                "{ bogus: {} }",
                "sinks[0].bogus: unknown variant `bogus`, expected one of `rtsp`, `file`, `udp`, `launch`, `display`, `depth16`",
            ),
            (
                "{ file: 5 }",
                "sinks[0].file: invalid type: integer `5`, expected struct FileSink",
            ),
            (
                "[1, 2]",
                "sinks[0]: invalid type: sequence, expected enum SinkConfig",
            ),
        ] {
            let (sink, messages, ..) = read::<SinkConfig>("sinks[0]", yaml);
            assert_eq!(sink, None, "{yaml}");
            assert_eq!(messages, [message], "{yaml}");
        }
    }

    #[test]
    fn a_hostile_section_is_read_again_only_a_bounded_number_of_times() {
        let properties: Vec<String> = (0..1000).map(|i| format!("k{i}: [1]")).collect();
        let yaml = format!("{{ properties: {{ {} }} }}", properties.join(", "));
        let (encoder, messages, ..) = read::<crate::config::EncoderConfig>("encoder", &yaml);
        assert_eq!(encoder, None);
        assert!(messages.len() <= MAX_REREADS + 2, "{messages:#?}");
        assert_eq!(
            messages[1],
            "encoder.properties.k1: invalid type: sequence, expected a string"
        );
        assert!(
            messages
                .last()
                .unwrap()
                .starts_with("encoder: reading stopped here"),
            "{messages:#?}"
        );
    }
}
