//! A frame's pixels: how they are laid out (format, planes, colour) and where they are (in
//! GStreamer's buffer, or staged on the model's device behind an opaque handle).
//!
//! Frames travel in the format the decoder made: NV12 and I420 are half the bytes of RGB, and
//! the model's runtime converts them on its device. The device side is opaque here: this module
//! knows nothing of tensors, so the pipelines can carry staged frames without touching them.

use std::any::Any;

use gstreamer as gst;
use gstreamer_video as gst_video;

/// The pixel formats the frame path carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit RGB.
    Rgb,
    /// 4:2:0: a Y plane, then U and V planes at half width and height (software decoders).
    I420,
    /// 4:2:0: a Y plane, then one plane of interleaved U/V pairs (NVDEC, most hardware).
    Nv12,
}

impl PixelFormat {
    /// The name in GStreamer caps.
    pub fn caps_name(self) -> &'static str {
        match self {
            Self::Rgb => "RGB",
            Self::I420 => "I420",
            Self::Nv12 => "NV12",
        }
    }

    pub fn video_format(self) -> gst_video::VideoFormat {
        match self {
            Self::Rgb => gst_video::VideoFormat::Rgb,
            Self::I420 => gst_video::VideoFormat::I420,
            Self::Nv12 => gst_video::VideoFormat::Nv12,
        }
    }

    pub fn from_video_format(format: gst_video::VideoFormat) -> Option<Self> {
        match format {
            gst_video::VideoFormat::Rgb => Some(Self::Rgb),
            gst_video::VideoFormat::I420 => Some(Self::I420),
            gst_video::VideoFormat::Nv12 => Some(Self::Nv12),
            _ => None,
        }
    }

    fn planes(self) -> usize {
        match self {
            Self::Rgb => 1,
            Self::I420 => 3,
            Self::Nv12 => 2,
        }
    }
}

/// How a YUV frame's numbers map to colours, as its caps say (GStreamer's defaults where they
/// say nothing): what a conversion must follow to give the colours GStreamer's would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YuvColour {
    /// The matrix's red and blue weights (BT.601: 0.299, 0.114; BT.709: 0.2126, 0.0722).
    pub kr: f64,
    pub kb: f64,
    /// 0..255 for every component, rather than 16..235 (Y) and 16..240 (U, V).
    pub full_range: bool,
    /// Chroma samples sit on the even luma columns (MPEG-2 and HD video) rather than between.
    pub chroma_h_cosited: bool,
    /// Chroma samples sit on the even luma rows rather than between.
    pub chroma_v_cosited: bool,
}

impl YuvColour {
    /// The colour GStreamer gives a YUV frame with these caps.
    pub fn of(info: &gst_video::VideoInfo) -> Self {
        let colorimetry = info.colorimetry();
        // GStreamer replaces a YUV matrix it cannot use by its default, BT.601 or BT.709.
        let (kr, kb) = colorimetry
            .matrix()
            .kr_kb()
            .unwrap_or(if info.height() > 576 {
                (0.2126, 0.0722)
            } else {
                (0.299, 0.114)
            });
        let site = info.chroma_site();
        Self {
            kr,
            kb,
            full_range: colorimetry.range() == gst_video::VideoColorRange::Range0_255,
            chroma_h_cosited: site.contains(gst_video::VideoChromaSite::H_COSITED),
            chroma_v_cosited: site.contains(gst_video::VideoChromaSite::V_COSITED),
        }
    }
}

/// Where one plane starts in the buffer and how far apart its rows are, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plane {
    pub offset: usize,
    pub stride: usize,
}

/// A buffer that cannot hold the picture its layout announces, or a layout no buffer can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "frame buffer of {len} bytes is too small for a {width}x{height} {format:?} frame (it needs {needed})"
    )]
    BufferTooSmall {
        len: usize,
        needed: usize,
        width: u32,
        height: u32,
        format: PixelFormat,
    },
    /// Offsets and strides (a decoder's video meta says what they are) whose sum overflows.
    #[error(
        "a {width}x{height} {format:?} frame with planes at {planes:?} would span more bytes than memory can address"
    )]
    TooLarge {
        width: u32,
        height: u32,
        format: PixelFormat,
        planes: Vec<Plane>,
    },
}

// A picture's sides are u32: a side times 3 (bytes per RGB row) fits `usize` on the 64-bit
// targets libtorch supports, so `plane_extent` needs no checks; offsets and strides, which a
// decoder's meta sets, are checked where they are added up (`span`).
const _: () = assert!(usize::BITS >= 64, "frame sizes assume a 64-bit usize");

/// How a frame's pixels are laid out in its buffer.
#[derive(Debug, Clone)]
pub struct FrameLayout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// RGB; Y, U, V (I420); Y, UV (NV12).
    pub planes: Vec<Plane>,
    /// `None` for RGB.
    pub colour: Option<YuvColour>,
    /// The frame as GStreamer describes it (caps for publishing it as it came).
    pub info: gst_video::VideoInfo,
}

impl FrameLayout {
    /// The layout of a frame with these caps; `meta` (a buffer's video meta: plane offsets and
    /// strides) overrides the caps' own where a decoder laid its planes out differently.
    /// `None` for formats the frame path does not carry.
    pub fn from_info(
        info: &gst_video::VideoInfo,
        meta: Option<(&[usize], &[i32])>,
    ) -> Option<Self> {
        let format = PixelFormat::from_video_format(info.format())?;
        let (offsets, strides) = meta.unwrap_or((info.offset(), info.stride()));
        let planes = (0..format.planes())
            .map(|p| {
                Some(Plane {
                    offset: *offsets.get(p)?,
                    stride: usize::try_from(*strides.get(p)?).ok()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            format,
            width: info.width(),
            height: info.height(),
            planes,
            colour: (format != PixelFormat::Rgb).then(|| YuvColour::of(info)),
            info: info.clone(),
        })
    }

    /// GStreamer's own layout of such a frame (rows padded to 4 bytes), with the colour
    /// GStreamer assumes for its size: what a frame made on the device is published as.
    pub fn standard(
        format: PixelFormat,
        width: u32,
        height: u32,
        fps: gst::Fraction,
    ) -> Option<Self> {
        let info = gst_video::VideoInfo::builder(format.video_format(), width, height)
            .fps(fps)
            .build()
            .ok()?;
        Self::from_info(&info, None)
    }

    /// Rows and bytes per row of plane `index` (samples, not padding).
    pub fn plane_extent(&self, index: usize) -> (usize, usize) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        match (self.format, index) {
            (PixelFormat::Rgb, _) => (h, w * 3),
            (_, 0) => (h, w),
            (PixelFormat::I420, _) => (ch, cw),
            (PixelFormat::Nv12, _) => (ch, cw * 2),
        }
    }

    /// The bytes the planes span: the least a buffer must hold. An error, never a wrapped
    /// size, where the planes' offsets and strides add up past what memory can address.
    pub fn span(&self) -> Result<usize, LayoutError> {
        let mut span = 0;
        for (p, plane) in self.planes.iter().enumerate() {
            let (rows, row_bytes) = self.plane_extent(p);
            let end = plane
                .stride
                .checked_mul(rows.saturating_sub(1))
                .and_then(|last_row| last_row.checked_add(plane.offset))
                .and_then(|start| start.checked_add(row_bytes))
                .ok_or_else(|| LayoutError::TooLarge {
                    width: self.width,
                    height: self.height,
                    format: self.format,
                    planes: self.planes.clone(),
                })?;
            span = span.max(end);
        }
        Ok(span)
    }

    /// Whether a buffer of `len` bytes holds every plane (and no row overlaps the next).
    pub fn check(&self, len: usize) -> Result<(), LayoutError> {
        let rows_fit =
            (0..self.planes.len()).all(|p| self.planes[p].stride >= self.plane_extent(p).1);
        let needed = self.span()?;
        if len < needed || !rows_fit {
            return Err(LayoutError::BufferTooSmall {
                len,
                needed,
                width: self.width,
                height: self.height,
                format: self.format,
            });
        }
        Ok(())
    }
}

/// A frame staged on a model's device by that model's runtime, which alone knows what it is.
pub trait DevicePixels: Send + std::fmt::Debug {
    /// For the runtime that made it, to take its own type back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    /// For the runtime that made it, to look at its own type.
    fn as_any(&self) -> &dyn Any;
}

/// Where a frame's pixels are.
#[derive(Debug)]
pub enum Pixels {
    /// In the buffer GStreamer made.
    Host(gst::Buffer),
    /// Staged on the model's device (the host buffer may already be released).
    Device(Box<dyn DevicePixels>),
    /// Handed to the model: the frame's result carries the picture to publish.
    Taken,
}

/// Host memory that becomes a GStreamer buffer's without a copy (a downloaded frame).
pub struct HostBytes(Box<dyn AsRef<[u8]> + Send>);

impl HostBytes {
    pub fn new(bytes: impl AsRef<[u8]> + Send + 'static) -> Self {
        Self(Box::new(bytes))
    }

    /// The buffer that owns these bytes.
    pub fn into_buffer(self) -> gst::Buffer {
        gst::Buffer::from_slice(self)
    }
}

impl AsRef<[u8]> for HostBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBytes({} bytes)", self.as_ref().len())
    }
}

/// A picture made on the device and copied back, laid out as GStreamer lays out its format.
#[derive(Debug)]
pub struct VideoImage {
    pub layout: FrameLayout,
    pub bytes: HostBytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_layouts_are_gstreamers() {
        gst::init().unwrap();
        let fps = gst::Fraction::new(30, 1);
        let i420 = FrameLayout::standard(PixelFormat::I420, 81, 61, fps).unwrap();
        // Rows padded to 4 bytes; the Y plane counts an even number of rows.
        assert_eq!(
            i420.planes,
            vec![
                Plane {
                    offset: 0,
                    stride: 84
                },
                Plane {
                    offset: 84 * 62,
                    stride: 44
                },
                Plane {
                    offset: 84 * 62 + 44 * 31,
                    stride: 44
                }
            ]
        );
        // The last row's padding is the buffer's, not the picture's.
        assert_eq!(i420.info.size(), 84 * 62 + 44 * 31 * 2);
        assert_eq!(i420.span(), Ok(i420.info.size() - 3));
        let colour = i420.colour.unwrap();
        assert_eq!((colour.kr, colour.full_range), (0.299, false));
        let hd = FrameLayout::standard(PixelFormat::Nv12, 1920, 1080, fps).unwrap();
        assert_eq!(hd.colour.unwrap().kr, 0.2126);
        assert!(hd.colour.unwrap().chroma_h_cosited);
        let rgb = FrameLayout::standard(PixelFormat::Rgb, 5, 2, fps).unwrap();
        assert_eq!(
            rgb.planes,
            vec![Plane {
                offset: 0,
                stride: 16
            }]
        );
        assert!(rgb.check(31).is_ok());
        assert!(rgb.check(30).unwrap_err().to_string().contains("needs 31"));
    }

    #[test]
    fn layouts_beyond_addressable_memory_are_errors_not_wrapped_sizes() {
        gst::init().unwrap();
        let fps = gst::Fraction::new(30, 1);
        let mut nv12 = FrameLayout::standard(PixelFormat::Nv12, 64, 48, fps).unwrap();
        // A decoder's meta with a chroma plane at the very end of the address space: the sum
        // wrapped to a small number, which a small buffer then passed.
        nv12.planes[1].offset = usize::MAX - 10;
        let error = nv12.span().unwrap_err();
        assert!(matches!(error, LayoutError::TooLarge { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("a 64x48 Nv12 frame with planes at"),
            "{error}"
        );
        assert_eq!(nv12.check(4096), Err(error));
        // A stride times the rows past usize.
        let mut rgb = FrameLayout::standard(PixelFormat::Rgb, 5, 3, fps).unwrap();
        rgb.planes[0].stride = usize::MAX / 2 + 1;
        assert!(matches!(rgb.check(31), Err(LayoutError::TooLarge { .. })));
        // The widest row a u32 allows, a million of them densely: a real (if huge) size.
        let mut huge = FrameLayout::standard(PixelFormat::Rgb, 5, 2, fps).unwrap();
        (huge.width, huge.height) = (u32::MAX, 1 << 20);
        huge.planes[0].stride = u32::MAX as usize * 3;
        let needed = huge.span().unwrap();
        assert_eq!(needed, (u32::MAX as usize * 3) << 20);
        assert!(matches!(
            huge.check(1 << 20),
            Err(LayoutError::BufferTooSmall { needed: n, .. }) if n == needed
        ));
    }
}
