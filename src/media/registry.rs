//! What this machine's GStreamer can build: element lookup, element properties, gst-launch
//! fragments. The preflight asks here so that `visiond check` reports what `run` would hit.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::MediaError;

/// Initialises GStreamer once per process; every entry point that builds pipelines calls it.
pub fn init() -> Result<(), MediaError> {
    gst::init().map_err(|error| MediaError::Init(error.to_string()))
}

/// Why `element` cannot be made here, or which of `properties` it lacks.
pub fn check_element<'a>(
    element: &str,
    properties: impl IntoIterator<Item = &'a str>,
) -> Result<(), ElementProblem> {
    let Some(factory) = gst::ElementFactory::find(element) else {
        return Err(ElementProblem::Missing);
    };
    let Ok(instance) = factory.create().build() else {
        return Err(ElementProblem::Missing);
    };
    let missing: Vec<String> = properties
        .into_iter()
        .filter(|property| instance.find_property(property).is_none())
        .map(str::to_string)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ElementProblem::NoSuchProperties(missing))
    }
}

/// What [`check_element`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementProblem {
    /// No plugin on this machine provides the element.
    Missing,
    /// The element exists but lacks these properties.
    NoSuchProperties(Vec<String>),
}

/// Parses a gst-launch fragment the way a pipeline would, so syntax errors and missing
/// elements show up with GStreamer's own message.
pub fn check_launch(description: &str) -> Result<(), MediaError> {
    gst::parse::bin_from_description(description, true)
        .map(|_| ())
        .map_err(|error| MediaError::Build {
            what: format!("'{description}'"),
            reason: error.to_string(),
        })
}

/// The GStreamer this process runs with, `1.22.0`.
pub fn version() -> String {
    let (major, minor, micro, _) = gst::version();
    format!("{major}.{minor}.{micro}")
}
