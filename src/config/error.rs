//! Configuration errors: each names its file and the key path inside it.

use std::collections::BTreeSet;
use std::fmt;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user would type it (relative to the working directory when possible).
    pub file: String,
    /// Dotted key path inside the file (`sinks[1].file.path`); empty for whole-file problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// At most 60 characters of a value, for messages that quote what the user wrote.
pub fn shown(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Every problem found in one load, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one file while it is being read and checked.
#[derive(Debug)]
pub struct FileErrors<'a> {
    pub file: &'a str,
    pub errors: &'a mut Vec<ConfigError>,
}

impl FileErrors<'_> {
    /// How many errors have been collected so far, in every file.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Records one problem. Messages may quote what was written (serde quotes a value of the
    /// wrong type, GStreamer a fragment), and are logged on a reload: credentials are masked.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            key: key.into(),
            message: super::redact::text(&message.into()),
        });
    }
}

/// Keys whose written value could not be read (a wrong type, an unknown variant, a required
/// key missing) and were given a stand-in so that the rest of their section could still be
/// read and checked. Each problem is reported once, as reading found it; what later checks say
/// about a stand-in is not about anything the user wrote, and is dropped.
#[derive(Debug, Default)]
pub struct Unreadable {
    /// (file, key) of every stand-in.
    keys: BTreeSet<(String, String)>,
    /// Positions in the error list of the errors reading reported: kept at any key.
    reported: BTreeSet<usize>,
}

impl Unreadable {
    pub(super) fn stand_in(&mut self, file: &str, key: String) {
        self.keys.insert((file.to_string(), key));
    }

    /// The error about to be pushed at position `index` is reading's own.
    pub(super) fn reported(&mut self, index: usize) {
        self.reported.insert(index);
    }

    /// Drops the errors later checks found at stand-ins. `errors` must be in the order found.
    pub(super) fn drop_stand_in_errors(&self, errors: &mut Vec<ConfigError>) {
        if self.keys.is_empty() {
            return;
        }
        let mut index = 0;
        errors.retain(|error| {
            let keep = self.reported.contains(&index)
                || !self.keys.contains(&(error.file.clone(), error.key.clone()));
            index += 1;
            keep
        });
    }
}

/// Puts errors in the order a person fixes them: the daemon file first, then each file by name;
/// inside a file, by section in the order the schema documents them, list items by index and
/// models by name. Errors at the same place keep the order they were found in.
pub fn sort_for_reading(errors: &mut [ConfigError], daemon_file: &str, sections: &[&str]) {
    errors.sort_by_cached_key(|error| {
        let top_end = error.key.find(['.', '[']).unwrap_or(error.key.len());
        let (top, rest) = error.key.split_at(top_end);
        let rank = if top.is_empty() {
            0
        } else {
            sections
                .iter()
                .position(|s| *s == top)
                .map_or(usize::MAX, |p| p + 1)
        };
        let index = rest
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse::<usize>().ok());
        let entry = if top == "models" {
            rest.trim_start_matches('.')
                .split('.')
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        (
            error.file != daemon_file,
            error.file.clone(),
            rank,
            index,
            entry,
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_cut() {
        assert_eq!(shown("short"), "short");
        let long = "x".repeat(1000);
        assert_eq!(shown(&long).chars().count(), 61);
    }
}
