//! What a model found in one frame, as the metadata records it.

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

/// One frame's per-frame results, for the JSON-lines metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FrameResults {
    /// Statistics of the depth map at frame resolution, in the model's units.
    Depth { min: f64, mean: f64, max: f64 },
    /// Best classes first, scores after smoothing, only those at or above `min_score`.
    Classes {
        #[serde(serialize_with = "scores")]
        top_k: Vec<(String, f64)>,
    },
    /// Fraction of the frame's pixels per class present, largest first.
    Segmentation {
        #[serde(serialize_with = "fractions")]
        histogram: Vec<(String, f64)>,
    },
}

fn labelled<S: Serializer>(items: &[(String, f64)], key: &str, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        label: &'a str,
        #[serde(flatten)]
        value: std::collections::BTreeMap<&'a str, f64>,
    }
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for (label, value) in items {
        seq.serialize_element(&Entry {
            label,
            value: [(key, *value)].into(),
        })?;
    }
    seq.end()
}

fn scores<S: Serializer>(items: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
    labelled(items, "score", s)
}

fn fractions<S: Serializer>(items: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
    labelled(items, "fraction", s)
}

impl FrameResults {
    /// The text drawn onto classification video: the best class and its score, `""` when no
    /// class reaches `min_score`; `None` for other tasks (their picture is the annotation).
    pub fn label(&self) -> Option<String> {
        match self {
            Self::Classes { top_k } => Some(
                top_k
                    .first()
                    .map(|(label, score)| format!("{label} {:.0}%", score * 100.0))
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }
}
