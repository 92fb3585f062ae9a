//! Colour conversion as tensor ops on the frames' device: 4:2:0 YUV (NV12, I420) to RGB for the
//! model and the overlay, and RGB to I420 for the encoder.
//!
//! Both ways are GStreamer's `videoconvert` (1.22) to the bit, so that a frame decoded to NV12 or
//! I420 and converted here is the frame the daemon would have had from GStreamer as RGB, and
//! the encoder gets the I420 GStreamer would have made. YUV to RGB:
//! - the matrix: GStreamer's 16-bit coefficients (`orc` `convert_I420_ARGB`), applied to each
//!   component minus 128 "splatted" to 16 bits, keeping the high half of each product, saturated
//!   to a signed byte, plus 128;
//! - the chroma: I420 takes GStreamer's fast path, nearest sample; NV12 takes the generic path,
//!   which upsamples with GStreamer's 2-tap filters (3:1 between samples, 1:1 for co-sited
//!   columns), horizontally first, each pass rounded to 8 bits.

use tch::{Kind, Tensor};

use super::ProcessingError;
use crate::frames::YuvColour;

/// A 4:2:0 frame's planes on the device, uint8. Views with row strides are fine.
pub enum Yuv420<'a> {
    /// Y [H, W], U [(H+1)/2, (W+1)/2], V likewise.
    I420 {
        y: &'a Tensor,
        u: &'a Tensor,
        v: &'a Tensor,
    },
    /// Y [H, W], UV [(H+1)/2, (W+1)/2, 2].
    Nv12 { y: &'a Tensor, uv: &'a Tensor },
}

/// GStreamer's integer coefficients for YUV -> RGB: (Y for every channel, V for R, U for B,
/// U for G, V for G), scaled by 2^16/257.
pub fn yuv_to_rgb_coefficients(colour: &YuvColour) -> [i64; 5] {
    let (kr, kb) = (colour.kr, colour.kb);
    let kg = 1.0 - kr - kb;
    let (luma, chroma) = if colour.full_range {
        (255.0, 255.0)
    } else {
        (219.0, 224.0)
    };
    // GStreamer scales by 1/range in single precision, then works in double.
    let inverse = |range: f64| f64::from(1.0f32 / range as f32);
    let scale = 256.0 * 255.0;
    let c = |value: f64, range: f64| (scale * value * inverse(range)).round_ties_even() as i64;
    [
        c(1.0, luma),
        c(2.0 * (1.0 - kr), chroma),
        c(2.0 * (1.0 - kb), chroma),
        c(-2.0 * kb * (1.0 - kb) / kg, chroma),
        c(-2.0 * kr * (1.0 - kr) / kg, chroma),
    ]
}

/// uint8 -> int32 `(x - 128)` as a signed byte copied into both halves of a 16-bit word.
fn splat(x: &Tensor) -> Result<Tensor, ProcessingError> {
    let signed = x.f_to_kind(Kind::Int)?.f_sub_scalar(128)?;
    let negative = signed.f_lt(0)?.f_to_kind(Kind::Int)?.f_mul_scalar(256)?;
    Ok(signed.f_mul_scalar(257)?.f_add(&negative)?)
}

/// The high 16 bits of a 16 x 16 bit signed product.
fn mulhs(word: &Tensor, coefficient: i64) -> Result<Tensor, ProcessingError> {
    Ok(word
        .f_mul_scalar(coefficient)?
        .f_div_scalar_mode(65536, "floor")?)
}

/// Sum of words saturated to a signed byte, plus 128: one output channel.
fn channel(sum: &Tensor) -> Result<Tensor, ProcessingError> {
    Ok(sum.f_clamp(-128, 127)?.f_add_scalar(128)?)
}

/// `x >> shift` for the non-negative filter sums.
fn shift(x: Tensor, by: i64) -> Result<Tensor, ProcessingError> {
    Ok(x.f_div_scalar_mode(1i64 << by, "floor")?)
}

/// Doubles `dim` by repeating each sample, cut to `size`.
fn nearest(c: &Tensor, dim: i64, size: i64) -> Result<Tensor, ProcessingError> {
    Ok(c.f_repeat_interleave_self_int(2, Some(dim), None)?
        .f_narrow(dim, 0, size)?)
}

/// Doubles `dim` with GStreamer's 2-tap upsampling filters, cut to `size`: between samples
/// (`cosited` false) each output is 3:1 of its two nearest samples; co-sited, even outputs are
/// the samples and odd ones the mean of their neighbours. The last output repeats the last
/// sample, as GStreamer's loop leaves it.
fn filtered(c: &Tensor, dim: i64, size: i64, cosited: bool) -> Result<Tensor, ProcessingError> {
    let n = c.size()[dim as usize];
    let first = c.f_narrow(dim, 0, 1)?;
    let last = c.f_narrow(dim, n - 1, 1)?;
    let a = c.f_narrow(dim, 0, n - 1)?;
    let b = c.f_narrow(dim, 1, n - 1)?;
    let pairs = if cosited {
        let mid = shift(a.f_add(&b)?.f_add_scalar(1)?, 1)?;
        Tensor::f_stack(&[&a, &mid], dim + 1)?
    } else {
        let near_a = shift(a.f_mul_scalar(3)?.f_add(&b)?.f_add_scalar(2)?, 2)?;
        let near_b = shift(b.f_mul_scalar(3)?.f_add(&a)?.f_add_scalar(2)?, 2)?;
        Tensor::f_stack(&[&near_a, &near_b], dim + 1)?
    };
    let pairs = pairs.f_flatten(dim, dim + 1)?;
    let parts = if cosited {
        vec![pairs, last.shallow_clone(), last]
    } else {
        vec![first, pairs, last]
    };
    Ok(Tensor::f_cat(&parts, dim)?.f_narrow(dim, 0, size)?)
}

/// A chroma plane [(H+1)/2, (W+1)/2] (uint8) at full size [H, W] (int32).
fn upsample(
    c: &Tensor,
    height: i64,
    width: i64,
    fast_path: bool,
    colour: &YuvColour,
) -> Result<Tensor, ProcessingError> {
    let c = c.f_to_kind(Kind::Int)?;
    if fast_path {
        return nearest(&nearest(&c, 1, width)?, 0, height);
    }
    let rows = filtered(&c, 1, width, colour.chroma_h_cosited)?;
    if colour.chroma_v_cosited {
        // GStreamer leaves co-sited rows unfiltered (each row takes its pair's chroma).
        nearest(&rows, 0, height)
    } else {
        filtered(&rows, 0, height, false)
    }
}

/// A 4:2:0 frame as uint8 RGB [H, W, 3], exactly as GStreamer's `videoconvert` makes it.
pub fn yuv420_to_rgb(frame: Yuv420<'_>, colour: &YuvColour) -> Result<Tensor, ProcessingError> {
    let (y, u, v, fast_path) = match frame {
        Yuv420::I420 { y, u, v } => (y, u.shallow_clone(), v.shallow_clone(), true),
        Yuv420::Nv12 { y, uv } => (y, uv.f_select(2, 0)?, uv.f_select(2, 1)?, false),
    };
    let (height, width) = y.size2()?;
    let expected = [(height + 1) / 2, (width + 1) / 2];
    for (name, plane) in [("U", &u), ("V", &v)] {
        if plane.size() != expected {
            return Err(ProcessingError::Frame {
                index: 0,
                reason: format!(
                    "{name} plane of {:?} for a {width}x{height} frame (expected {expected:?})",
                    plane.size()
                ),
            });
        }
    }
    let [cy, cv_r, cu_b, cu_g, cv_g] = yuv_to_rgb_coefficients(colour);
    let wy = mulhs(&splat(y)?, cy)?;
    let wu = splat(&upsample(&u, height, width, fast_path, colour)?)?;
    let wv = splat(&upsample(&v, height, width, fast_path, colour)?)?;
    let r = channel(&wy.f_add(&mulhs(&wv, cv_r)?)?)?;
    let b = channel(&wy.f_add(&mulhs(&wu, cu_b)?)?)?;
    let g = channel(&wy.f_add(&mulhs(&wu, cu_g)?)?.f_add(&mulhs(&wv, cv_g)?)?)?;
    Ok(Tensor::f_stack(&[r, g, b], 2)?.f_to_kind(Kind::Uint8)?)
}

/// GStreamer's integer coefficients for RGB -> YUV: rows Y, U, V; columns R, G, B and the
/// offset, in 1/256 (its single-precision 1/255 included).
pub fn rgb_to_yuv_coefficients(colour: &YuvColour) -> [[i64; 4]; 3] {
    let (kr, kb) = (colour.kr, colour.kb);
    let kg = 1.0 - kr - kb;
    let (x_u, x_v) = (1.0 / (2.0 * (1.0 - kb)), 1.0 / (2.0 * (1.0 - kr)));
    let rows = [
        [kr, kg, kb],
        [-x_u * kr, -x_u * kg, x_u * (1.0 - kb)],
        [x_v * (1.0 - kr), -x_v * kg, -x_v * kb],
    ];
    let (scales, offsets) = if colour.full_range {
        ([255.0, 255.0, 255.0], [0.0, 128.0, 128.0])
    } else {
        ([219.0, 224.0, 224.0], [16.0, 128.0, 128.0])
    };
    let inverse = f64::from(1.0f32 / 255.0f32);
    let mut coefficients = [[0i64; 4]; 3];
    for (i, row) in rows.iter().enumerate() {
        for (j, weight) in row.iter().enumerate() {
            coefficients[i][j] =
                (256.0 * (scales[i] * (weight * inverse))).round_ties_even() as i64;
        }
        coefficients[i][3] = (256.0 * offsets[i]) as i64;
    }
    coefficients
}

/// The last column (or row) of `x` repeated once more when `dim` has an odd size.
fn even(x: &Tensor, dim: i64) -> Result<Tensor, ProcessingError> {
    let n = x.size()[dim as usize];
    if n % 2 == 0 {
        return Ok(x.shallow_clone());
    }
    Ok(Tensor::f_cat(&[x, &x.f_narrow(dim, n - 1, 1)?], dim)?)
}

/// A full-resolution chroma plane (int32 [H, W]) at 4:2:0, as GStreamer's generic path makes
/// it: rows first (the mean of each pair, or the even row where chroma is co-sited
/// vertically), then columns (the mean of each pair; 1:2:1 on the even columns where co-sited,
/// 3:1 at the left edge and 1:3 on the last, as its loop leaves them).
fn subsample(full: &Tensor, colour: &YuvColour) -> Result<Tensor, ProcessingError> {
    let rows = even(full, 0)?;
    let top = rows.f_slice(0, 0, None, 2)?;
    let q = if colour.chroma_v_cosited {
        top
    } else {
        shift(
            top.f_add(&rows.f_slice(0, 1, None, 2)?)?.f_add_scalar(1)?,
            1,
        )?
    };
    let width = q.size()[1];
    let columns = if !colour.chroma_h_cosited {
        let q = even(&q, 1)?;
        shift(
            q.f_slice(1, 0, None, 2)?
                .f_add(&q.f_slice(1, 1, None, 2)?)?
                .f_add_scalar(1)?,
            1,
        )?
    } else if width < 2 {
        q
    } else {
        let chroma = (width + 1) / 2;
        let centre = q.f_slice(1, 0, None, 2)?;
        let left = Tensor::f_cat(
            &[q.f_narrow(1, 0, 1)?, q.f_slice(1, 1, 2 * chroma - 1, 2)?],
            1,
        )?;
        let right = if chroma == 1 {
            q.f_narrow(1, 1, 1)?
        } else {
            Tensor::f_cat(
                &[
                    q.f_slice(1, 1, 2 * chroma - 2, 2)?,
                    centre.f_narrow(1, chroma - 1, 1)?,
                ],
                1,
            )?
        };
        shift(
            left.f_add(&centre.f_mul_scalar(2)?)?
                .f_add(&right)?
                .f_add_scalar(2)?,
            2,
        )?
    };
    Ok(columns.f_to_kind(Kind::Uint8)?)
}

/// uint8 RGB [H, W, 3] to I420 planes (uint8 Y [H, W], U and V [(H+1)/2, (W+1)/2]) in
/// `colour`, on the frame's device: what the encoder takes, exactly as GStreamer's
/// `videoconvert` would make it from the same RGB (limited range, where it never clips).
pub fn rgb_to_i420(
    rgb: &Tensor,
    colour: &YuvColour,
) -> Result<(Tensor, Tensor, Tensor), ProcessingError> {
    let (_, _, channels) = rgb.size3()?;
    if channels != 3 || rgb.kind() != Kind::Uint8 {
        return Err(ProcessingError::Frame {
            index: 0,
            reason: format!(
                "expected uint8 [H, W, 3] RGB to convert, got {:?} {:?}",
                rgb.kind(),
                rgb.size()
            ),
        });
    }
    let channels: Vec<Tensor> = (0..3)
        .map(|c| rgb.f_select(2, c).and_then(|t| t.f_to_kind(Kind::Int)))
        .collect::<Result<_, _>>()?;
    let coefficients = rgb_to_yuv_coefficients(colour);
    let component = |row: usize| -> Result<Tensor, ProcessingError> {
        let [r, g, b, offset] = coefficients[row];
        let sum = channels[0]
            .f_mul_scalar(r)?
            .f_add(&channels[1].f_mul_scalar(g)?)?
            .f_add(&channels[2].f_mul_scalar(b)?)?
            .f_add_scalar(offset)?;
        Ok(shift(sum, 8)?.f_clamp(0, 255)?)
    };
    let y = component(0)?.f_to_kind(Kind::Uint8)?;
    let u = subsample(&component(1)?, colour)?;
    let v = subsample(&component(2)?, colour)?;
    Ok((y, u, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn colour(kr: f64, kb: f64, full_range: bool) -> YuvColour {
        YuvColour {
            kr,
            kb,
            full_range,
            chroma_h_cosited: false,
            chroma_v_cosited: false,
        }
    }

    #[test]
    fn gstreamers_coefficients() {
        // As GStreamer 1.22 computes them (GST_DEBUG=video-converter:6 prints the matrix).
        assert_eq!(
            yuv_to_rgb_coefficients(&colour(0.299, 0.114, false)),
            [298, 409, 516, -100, -208]
        );
    }

    #[test]
    fn limited_range_white_is_gstreamers_253() {
        // GStreamer's fast path ignores the luma offset: Y 235 comes out as 253, not 255.
        let y = Tensor::from_slice(&[16u8, 128, 235, 255]).view([1, 4]);
        let c = Tensor::from_slice(&[128u8, 128]).view([1, 2]);
        let rgb = yuv420_to_rgb(
            Yuv420::I420 {
                y: &y,
                u: &c,
                v: &c,
            },
            &colour(0.299, 0.114, false),
        )
        .unwrap();
        let red = Vec::<u8>::try_from(rgb.select(2, 0).flatten(0, -1)).unwrap();
        assert_eq!(red, vec![0, 128, 253, 255]);
    }

    #[test]
    fn gstreamers_rgb_coefficients() {
        // GStreamer 1.22, BT.709 limited range (GST_DEBUG=video-converter:6).
        assert_eq!(
            rgb_to_yuv_coefficients(&colour(0.2126, 0.0722, false)),
            [
                [47, 157, 16, 4096],
                [-26, -87, 112, 32768],
                [112, -102, -10, 32768]
            ]
        );
    }

    #[test]
    fn rgb_grey_goes_to_neutral_chroma_and_back() {
        let rgb = Tensor::full([4, 6, 3], 100, (Kind::Uint8, tch::Device::Cpu));
        let c = colour(0.2126, 0.0722, false);
        let (y, u, v) = rgb_to_i420(&rgb, &c).unwrap();
        assert_eq!(u.size(), [2, 3]);
        // Grey has no colour (GStreamer's coefficients, truncated, land one below neutral).
        assert_eq!(Vec::<u8>::try_from(u.flatten(0, -1)).unwrap(), vec![127; 6]);
        let back = yuv420_to_rgb(
            Yuv420::I420 {
                y: &y,
                u: &u,
                v: &v,
            },
            &c,
        )
        .unwrap();
        // GStreamer's own round trip is this lossy (its fast path ignores the luma offset).
        let diff = (back.to_kind(Kind::Int) - 100).abs().max().int64_value(&[]);
        assert!(diff <= 4, "{diff}");
    }
}
