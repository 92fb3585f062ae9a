//! The files of a segmented recording: how each is named (its start time and a counter that
//! continues across restarts), finding them again on disk, and retention (`max_age`,
//! `max_bytes`), which deletes the oldest.
//!
//! A segment is `<before><start>-<counter><after>`, e.g. `door-20261202T131500Z-00003.mp4`
//! for `path: door.mp4` (or `door-%05d.mp4`): the start is the wall-clock time (UTC) of its
//! first frame, so a name says when its footage was taken, and names sort in time order
//! within a day's numbering. The counter keeps names unique even when the clock is set back.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{FileSink, SegmentCounter, segment_counter};

/// `YYYYMMDDTHHMMSSZ`: ISO 8601's basic format, which has no `:` (not allowed in file names on
/// some file systems that recordings are copied to).
const TIME_LEN: usize = 16;

/// How one recording's segments are named.
#[derive(Debug, Clone)]
pub struct SegmentNames {
    dir: PathBuf,
    counter: SegmentCounter,
}

/// A segment found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub index: u32,
    /// From its name; an older name without a time (`door-00003.mp4`) gives its file's
    /// modification time instead.
    pub start: SystemTime,
    pub bytes: u64,
}

impl SegmentNames {
    /// The names for `path`; `None` when its file name holds a '%' other than one counter
    /// (which configuration checks refuse).
    pub fn of(path: &Path) -> Option<Self> {
        let file_name = path.file_name()?.to_string_lossy();
        Some(Self {
            dir: path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            counter: segment_counter(&file_name)?,
        })
    }

    /// The name of segment `index`, which starts at `start`.
    pub fn path(&self, index: u32, start: SystemTime) -> PathBuf {
        let SegmentCounter {
            before,
            width,
            after,
        } = &self.counter;
        self.dir.join(format!(
            "{before}{}-{index:0width$}{after}",
            basic_time(start)
        ))
    }

    /// The counter and start of a file named like this recording's segments.
    fn parse(&self, file_name: &str) -> Option<(u32, Option<SystemTime>)> {
        let middle = file_name
            .strip_prefix(self.counter.before.as_str())?
            .strip_suffix(self.counter.after.as_str())?;
        let (time, digits) = match middle.split_once('-') {
            Some((time, digits)) => (Some(parse_basic_time(time)?), digits),
            None => (None, middle),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some((digits.parse().ok()?, time))
    }

    /// This recording's segments on disk, oldest (lowest counter) first.
    pub fn existing(&self) -> Vec<Segment> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut segments: Vec<Segment> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let (index, start) = self.parse(&entry.file_name().to_string_lossy())?;
                let meta = entry.metadata().ok().filter(|m| m.is_file())?;
                Some(Segment {
                    path: entry.path(),
                    index,
                    start: start.or_else(|| meta.modified().ok())?,
                    bytes: meta.len(),
                })
            })
            .collect();
        segments.sort_by_key(|s| (s.index, s.start));
        segments
    }

    /// The counter of the next segment: one past the highest on disk, so a restarted pipeline
    /// (or daemon) continues the numbering and never writes over an earlier segment, even
    /// after retention deleted the oldest.
    pub fn next_index(&self) -> u32 {
        self.existing()
            .last()
            .map_or(0, |last| last.index.saturating_add(1))
    }
}

/// `2026-12-02T13:15:00Z` as `20261202T131500Z` (times before 1970 as 1970).
fn basic_time(time: SystemTime) -> String {
    let time = time.max(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

fn parse_basic_time(text: &str) -> Option<SystemTime> {
    if text.len() != TIME_LEN || !text.is_ascii() {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    if &text[8..9] != "T" || &text[15..] != "Z" {
        return None;
    }
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// When segments are deleted: older than `max_age`, or beyond `max_bytes` in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

/// Why a segment was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Age,
    Size,
}

impl Expiry {
    pub fn key(self) -> &'static str {
        match self {
            Self::Age => "max_age",
            Self::Size => "max_bytes",
        }
    }
}

impl Retention {
    pub fn of(sink: &FileSink) -> Self {
        Self {
            max_age: sink.max_age,
            max_bytes: sink.max_bytes,
        }
    }

    pub fn is_set(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }

    /// The segments to delete at `now`, oldest first, with why. `segments` are oldest first;
    /// the newest of them is never chosen: it is the one being written (or, when a new one
    /// starts, the one just closed, which is still being finished).
    pub fn expired<'a>(
        &self,
        segments: &'a [Segment],
        now: SystemTime,
    ) -> Vec<(&'a Segment, Expiry)> {
        let Some((_newest, older)) = segments.split_last() else {
            return Vec::new();
        };
        let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
        let mut expired = Vec::new();
        for segment in older {
            let too_old = self
                .max_age
                .is_some_and(|age| now.duration_since(segment.start).is_ok_and(|a| a > age));
            let too_big = self.max_bytes.is_some_and(|max| total > max);
            let why = match (too_old, too_big) {
                (true, _) => Expiry::Age,
                (false, true) => Expiry::Size,
                (false, false) => continue,
            };
            total -= segment.bytes;
            expired.push((segment, why));
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn names_carry_the_start_time_and_a_counter() {
        let names = SegmentNames::of(Path::new("/rec/door.mp4")).unwrap();
        assert_eq!(
            names.path(3, at("2026-12-02T13:15:00Z")),
            Path::new("/rec/door-20261202T131500Z-00003.mp4")
        );
        let names = SegmentNames::of(Path::new("/rec/cam-%03d.mkv")).unwrap();
        assert_eq!(
            names.path(12, at("2026-01-09T08:05:07Z")),
            Path::new("/rec/cam-20260109T080507Z-012.mkv")
        );
        assert!(SegmentNames::of(Path::new("/rec/cam-%s.mkv")).is_none());
    }

    #[test]
    fn names_parse_back_as_their_counter_and_time() {
        let names = SegmentNames::of(Path::new("/rec/door.mp4")).unwrap();
        let start = at("2026-12-02T13:15:00Z");
        let name = names.path(7, start);
        let file = name.file_name().unwrap().to_string_lossy();
        assert_eq!(names.parse(&file), Some((7, Some(start))));
        // Segments from before names carried a time still count.
        assert_eq!(names.parse("door-00004.mp4"), Some((4, None)));
        for other in [
            "door.mp4",
            "door-x.mp4",
            "door-2-20261202T131500Z-00001.mp4",
            "door-20261202T131500Z-00001.mkv",
            "door.1733000000.mp4",
        ] {
            assert_eq!(names.parse(other), None, "{other}");
        }
    }

    #[test]
    fn numbering_continues_after_the_highest_segment_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let names = SegmentNames::of(&dir.path().join("door.mkv")).unwrap();
        assert_eq!(names.next_index(), 0);
        let start = at("2026-12-02T13:15:00Z");
        // Retention deleted 0..2; an older segment without a time is counted too.
        std::fs::write(dir.path().join("door-00001.mkv"), "x").unwrap();
        std::fs::write(names.path(5, start), "x").unwrap();
        std::fs::write(names.path(3, start + Duration::from_secs(60)), "x").unwrap();
        assert_eq!(names.next_index(), 6);
        let indices: Vec<u32> = names.existing().iter().map(|s| s.index).collect();
        assert_eq!(indices, vec![1, 3, 5]);
    }

    fn segment(index: u32, start: SystemTime, bytes: u64) -> Segment {
        Segment {
            path: PathBuf::from(format!("/rec/{index}")),
            index,
            start,
            bytes,
        }
    }

    #[test]
    fn retention_deletes_the_oldest_by_age_then_by_size_never_the_newest() {
        let now = at("2026-12-10T00:00:00Z");
        let day = Duration::from_secs(86_400);
        let segments = vec![
            segment(0, now - 9 * day, 100),
            segment(1, now - 8 * day, 100),
            segment(2, now - 2 * day, 500),
            segment(3, now - day, 100),
            segment(4, now - 3 * day, 100), // the clock was set back: age by its name
            segment(5, now, 100),
        ];
        let retention = Retention {
            max_age: Some(7 * day),
            max_bytes: Some(400),
        };
        let expired: Vec<(u32, Expiry)> = retention
            .expired(&segments, now)
            .into_iter()
            .map(|(s, why)| (s.index, why))
            .collect();
        assert_eq!(
            expired,
            vec![(0, Expiry::Age), (1, Expiry::Age), (2, Expiry::Size)]
        );
        // However small the limit, the newest segment stays.
        let tiny = Retention {
            max_age: Some(Duration::from_secs(1)),
            max_bytes: Some(1),
        };
        assert_eq!(tiny.expired(&segments, now).len(), 5);
        assert!(tiny.expired(&segments[5..], now).is_empty());
        assert!(Retention::default().expired(&segments, now).is_empty());
    }
}
