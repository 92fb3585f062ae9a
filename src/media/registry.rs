//! What this machine's GStreamer can build: element lookup, element properties, gst-launch
//! fragments. The preflight asks here so that `visiond check` reports what `run` would hit.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::MediaError;
use crate::config::redact;

/// Initialises GStreamer once per process; every entry point that builds pipelines calls it.
pub fn init() -> Result<(), MediaError> {
    super::glib_log::install();
    gst::init().map_err(|error| MediaError::Init(error.to_string()))
}

/// The pipeline `text` describes, for `what` (named in the error when GStreamer cannot build
/// it). GStreamer's reason may quote the description (a value it could not set), so it is
/// masked like the description itself would be.
pub fn launch(text: &str, what: &str) -> Result<gst::Pipeline, MediaError> {
    let build_error = |reason: String| MediaError::Build {
        what: what.to_string(),
        reason,
    };
    gst::parse::launch(text)
        .map_err(|e| build_error(redact::text(&e.to_string())))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| build_error("the description did not make a pipeline".into()))
}

/// The element called `name` in `pipeline`, as a `T`; an error naming `what` and the element
/// when it is missing or of another type (a defect in our own description).
pub fn named<T: IsA<gst::Element>>(
    pipeline: &gst::Pipeline,
    name: &str,
    what: &str,
) -> Result<T, MediaError> {
    pipeline
        .by_name(name)
        .and_then(|element| element.downcast::<T>().ok())
        .ok_or_else(|| MediaError::Element {
            what: what.to_string(),
            element: name.to_string(),
        })
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
/// elements show up with GStreamer's own message (the fragment's credentials masked).
pub fn check_launch(description: &str) -> Result<(), MediaError> {
    gst::parse::bin_from_description(description, true)
        .map(|_| ())
        .map_err(|error| MediaError::Build {
            what: format!("'{}'", redact::text(description)),
            reason: redact::text(&error.to_string()),
        })
}

/// The GStreamer this process runs with, `1.22.0`.
pub fn version() -> String {
    let (major, minor, micro, _) = gst::version();
    format!("{major}.{minor}.{micro}")
}

/// The H.264 encoders `encoder.element: auto` considers, best first: NVENC, VA-API (new and
/// old plugin), V4L2 memory-to-memory (Jetson, Raspberry Pi), then x264 in software.
pub const AUTO_ENCODERS: [&str; 5] = [
    "nvh264enc",
    "vah264enc",
    "vaapih264enc",
    "v4l2h264enc",
    "x264enc",
];

/// The encoder `auto` stands for on this machine: the first of [`AUTO_ENCODERS`] that the
/// registry has and that can be made (a hardware encoder whose device is missing cannot).
/// Decided once per process.
pub fn auto_encoder() -> Option<&'static str> {
    static PICKED: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *PICKED.get_or_init(|| {
        init().ok()?;
        AUTO_ENCODERS.into_iter().find(|name| {
            gst::ElementFactory::find(name).is_some_and(|factory| factory.create().build().is_ok())
        })
    })
}

/// The element `configured` (an element name or `auto`) means here; `None` when `auto` finds
/// no H.264 encoder at all.
pub fn resolve_encoder(configured: &str) -> Option<String> {
    if configured == crate::config::AUTO_ENCODER {
        auto_encoder().map(str::to_string)
    } else {
        Some(configured.to_string())
    }
}

/// Whether the element's `direction` pad templates accept `caps`.
pub fn pad_accepts(element: &str, direction: gst::PadDirection, caps: &gst::Caps) -> bool {
    gst::ElementFactory::find(element).is_some_and(|factory| {
        factory
            .static_pad_templates()
            .iter()
            .filter(|template| template.direction() == direction)
            .any(|template| template.caps().can_intersect(caps))
    })
}

/// The raw format `element` is handed: `format` when it takes it, else the first 4:2:0 format
/// it takes (I420, then NV12). The error says what the element takes instead.
pub fn encoder_input(
    element: &str,
    format: Option<crate::config::PixelFormat>,
) -> Result<crate::config::PixelFormat, String> {
    let takes = |format: crate::config::PixelFormat| {
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", format.caps_name())
            .build();
        pad_accepts(element, gst::PadDirection::Sink, &caps)
    };
    match format {
        Some(format) if takes(format) => Ok(format),
        Some(format) => Err(format!(
            "element '{element}' does not take {} input",
            format.caps_name()
        )),
        None => crate::config::PixelFormat::DEFAULTS
            .into_iter()
            .find(|&format| takes(format))
            .ok_or_else(|| {
                format!(
                    "element '{element}' takes neither I420 nor NV12 (4:2:0); set encoder.format"
                )
            }),
    }
}

/// Whether `element` can produce H.264 of `profile`.
pub fn encoder_has_profile(element: &str, profile: crate::config::H264Profile) -> bool {
    let caps = gst::Caps::builder("video/x-h264")
        .field("profile", profile.caps_name())
        .build();
    pad_accepts(element, gst::PadDirection::Src, &caps)
}
