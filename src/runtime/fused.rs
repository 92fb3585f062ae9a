//! The colour conversions on CUDA as single fused kernels (`native/kernels.cuh`), in place of
//! the tensor-op conversions of [`crate::processing::colour`]: one kernel per frame where those
//! queue about 85 (NV12 to RGB at 1080p) or 40 (RGB to I420) full-frame operations on the
//! model's stream.
//!
//! The kernels are compiled by NVRTC when a device first needs them. Each conversion proves
//! itself once per device and kind: its first frame is also converted the reference way and
//! the two must be equal to the byte, or the fused kernel is not used again. Any failure (no
//! NVRTC, a compile or launch error, a disagreement) is logged once and the frame path goes on
//! with the reference conversions: the fused path can make the daemon faster, never wrong.
//! `VISIOND_FUSED_KERNELS=off` keeps the reference conversions (to compare the two).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tch::{Device, Kind, Tensor};

use super::native;
use crate::frames::YuvColour;
use crate::processing::{
    ProcessingError, Yuv420, rgb_to_i420, rgb_to_yuv_coefficients, yuv_to_rgb_coefficients,
    yuv420_to_rgb,
};

/// The conversions, each checked on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Conversion {
    I420ToRgb,
    Nv12ToRgb,
    RgbToYuv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Equal to the reference on its first frame.
    Proven,
    /// Failed or disagreed once: the reference conversion from then on.
    Refused,
}

fn trust() -> &'static Mutex<HashMap<(usize, Conversion), Trust>> {
    static TRUST: OnceLock<Mutex<HashMap<(usize, Conversion), Trust>>> = OnceLock::new();
    TRUST.get_or_init(Default::default)
}

/// Whether the fused conversions may be used (`VISIOND_FUSED_KERNELS=off` says no).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let off = std::env::var("VISIOND_FUSED_KERNELS").is_ok_and(|v| v == "off" || v == "0");
        if off {
            tracing::info!("VISIOND_FUSED_KERNELS=off: colour conversions as tensor ops");
        }
        !off
    })
}

static FUSED_FRAMES: AtomicU64 = AtomicU64::new(0);
static REFERENCE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// Conversions on CUDA so far: (by a fused kernel, by tensor ops). CPU frames count in neither.
pub fn conversion_counts() -> (u64, u64) {
    (
        FUSED_FRAMES.load(Ordering::Relaxed),
        REFERENCE_FRAMES.load(Ordering::Relaxed),
    )
}

/// What to do with one conversion on `device`.
enum Route {
    Reference,
    /// Proven on this CUDA device.
    Fused(usize),
    /// The first on this CUDA device: fused, and checked against the reference.
    Prove(usize),
}

fn route(device: Device, conversion: Conversion) -> Route {
    let Device::Cuda(index) = device else {
        return Route::Reference;
    };
    if !enabled() {
        return Route::Reference;
    }
    let known = trust()
        .lock()
        .map(|t| t.get(&(index, conversion)).copied())
        .unwrap_or(Some(Trust::Refused));
    match known {
        Some(Trust::Proven) => Route::Fused(index),
        Some(Trust::Refused) => Route::Reference,
        None => match native::load_kernels(index) {
            Ok(()) => Route::Prove(index),
            Err(reason) => {
                settle(index, conversion, Err(reason.to_string()));
                Route::Reference
            }
        },
    }
}

/// Counts a conversion on CUDA by the way it was made.
fn count(device: Device, fused: bool) {
    if device.is_cuda() {
        let counter = if fused {
            &FUSED_FRAMES
        } else {
            &REFERENCE_FRAMES
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records how a conversion did on a device, logging each change once. A failure after a
/// success still refuses the kernel: one that failed is never used again.
fn settle(index: usize, conversion: Conversion, outcome: Result<(), String>) {
    let Ok(mut table) = trust().lock() else {
        return;
    };
    let key = (index, conversion);
    match (table.get(&key), &outcome) {
        (Some(Trust::Refused), _) | (Some(Trust::Proven), Ok(())) => return,
        _ => {}
    }
    let device = format!("cuda:{index}");
    match outcome {
        Ok(()) => {
            table.insert(key, Trust::Proven);
            tracing::info!(
                %device,
                ?conversion,
                "fused colour conversion in use (its first frame equal to the reference)"
            );
        }
        Err(reason) => {
            table.insert(key, Trust::Refused);
            tracing::warn!(
                %device,
                ?conversion,
                "fused colour conversion not used, tensor ops instead: {reason}"
            );
        }
    }
}

/// The largest difference between two uint8 tensors of one shape, in uint8 steps.
fn largest_difference(a: &Tensor, b: &Tensor) -> Result<i64, String> {
    if a.size() != b.size() {
        return Err(format!(
            "made {:?} where the reference is {:?}",
            a.size(),
            b.size()
        ));
    }
    let steps = a
        .f_to_kind(Kind::Int)
        .and_then(|a| a.f_sub(&b.f_to_kind(Kind::Int)?))
        .and_then(|d| d.f_abs()?.f_max()?.f_int64_value(&[]))
        .map_err(|e| e.to_string())?;
    Ok(steps)
}

fn agree(worst: i64) -> Result<(), String> {
    match worst {
        0 => Ok(()),
        steps => Err(format!("differs from the reference by up to {steps} steps")),
    }
}

/// 4:2:0 planes to uint8 RGB [H, W, 3], exactly as [`yuv420_to_rgb`] makes it.
pub(super) fn to_rgb(frame: Yuv420<'_>, colour: &YuvColour) -> Result<Tensor, ProcessingError> {
    let (y, u, v, conversion) = match &frame {
        Yuv420::I420 { y, u, v } => (
            *y,
            u.shallow_clone(),
            v.shallow_clone(),
            Conversion::I420ToRgb,
        ),
        Yuv420::Nv12 { y, uv } => (
            *y,
            uv.f_select(2, 0)?,
            uv.f_select(2, 1)?,
            Conversion::Nv12ToRgb,
        ),
    };
    let device = y.device();
    let (index, proving) = match route(device, conversion) {
        Route::Reference => {
            count(device, false);
            return yuv420_to_rgb(frame, colour);
        }
        Route::Fused(index) => (index, false),
        Route::Prove(index) => (index, true),
    };
    let params = native::YuvToRgbParams {
        filtered: conversion == Conversion::Nv12ToRgb,
        h_cosited: colour.chroma_h_cosited,
        v_cosited: colour.chroma_v_cosited,
        coefficients: yuv_to_rgb_coefficients(colour).map(|c| c as i32),
    };
    let fused = native::fused_yuv420_to_rgb(y, &u, &v, &params).map_err(|e| e.to_string());
    if !proving {
        match fused {
            Ok(rgb) => {
                count(device, true);
                return Ok(rgb);
            }
            Err(reason) => settle(index, conversion, Err(reason)),
        }
        count(device, false);
        return yuv420_to_rgb(frame, colour);
    }
    let reference = yuv420_to_rgb(frame, colour)?;
    let outcome = fused.and_then(|rgb| agree(largest_difference(&rgb, &reference)?));
    settle(index, conversion, outcome);
    count(device, false);
    Ok(reference)
}

/// uint8 RGB [H, W, 3] into Y, U and V plane views (I420, or NV12's interleaved plane as two
/// views one byte apart), exactly as [`rgb_to_i420`] makes them.
pub(super) fn to_yuv420(
    rgb: &Tensor,
    planes: [&Tensor; 3],
    colour: &YuvColour,
) -> Result<(), ProcessingError> {
    let device = rgb.device();
    let reference = |planes: [&Tensor; 3]| -> Result<(), ProcessingError> {
        count(device, false);
        let (y, u, v) = rgb_to_i420(rgb, colour)?;
        for (view, plane) in planes.into_iter().zip([y, u, v]) {
            view.shallow_clone().f_copy_(&plane)?;
        }
        Ok(())
    };
    let conversion = Conversion::RgbToYuv;
    let (index, proving) = match route(device, conversion) {
        Route::Reference => return reference(planes),
        Route::Fused(index) => (index, false),
        Route::Prove(index) => (index, true),
    };
    let fused = native::fused_rgb_to_yuv420(
        rgb,
        planes,
        colour.chroma_h_cosited,
        colour.chroma_v_cosited,
        &rgb_to_yuv_coefficients(colour),
    )
    .map_err(|e| e.to_string());
    let outcome = if proving {
        fused.and_then(|()| {
            let (y, u, v) = rgb_to_i420(rgb, colour).map_err(|e| e.to_string())?;
            let mut worst = 0;
            for (plane, expected) in planes.into_iter().zip([&y, &u, &v]) {
                worst = worst.max(largest_difference(plane, expected)?);
            }
            agree(worst)
        })
    } else {
        fused
    };
    match outcome {
        Ok(()) => {
            if proving {
                settle(index, conversion, Ok(()));
            }
            count(device, true);
            Ok(())
        }
        Err(reason) => {
            settle(index, conversion, Err(reason));
            reference(planes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(index: usize, conversion: Conversion) -> Option<Trust> {
        trust().lock().unwrap().get(&(index, conversion)).copied()
    }

    #[test]
    fn a_device_that_cannot_load_the_kernels_keeps_the_reference_for_good() {
        // No CUDA device 41 anywhere these tests run: loading fails, and is not retried.
        assert!(matches!(
            route(Device::Cuda(41), Conversion::Nv12ToRgb),
            Route::Reference
        ));
        assert_eq!(known(41, Conversion::Nv12ToRgb), Some(Trust::Refused));
        assert!(matches!(
            route(Device::Cuda(41), Conversion::Nv12ToRgb),
            Route::Reference
        ));
        assert!(matches!(
            route(Device::Cpu, Conversion::Nv12ToRgb),
            Route::Reference
        ));
    }

    #[test]
    fn a_failure_after_a_success_refuses_and_a_refusal_stands() {
        settle(42, Conversion::RgbToYuv, Ok(()));
        assert_eq!(known(42, Conversion::RgbToYuv), Some(Trust::Proven));
        assert!(matches!(
            route(Device::Cuda(42), Conversion::RgbToYuv),
            Route::Fused(42)
        ));
        settle(42, Conversion::RgbToYuv, Err("launch failed".into()));
        assert_eq!(known(42, Conversion::RgbToYuv), Some(Trust::Refused));
        settle(42, Conversion::RgbToYuv, Ok(()));
        assert_eq!(known(42, Conversion::RgbToYuv), Some(Trust::Refused));
        // Each conversion is judged on its own.
        assert_eq!(known(42, Conversion::I420ToRgb), None);
    }

    #[test]
    fn only_identical_bytes_agree() {
        let a = Tensor::from_slice(&[0u8, 10, 255]);
        assert_eq!(largest_difference(&a, &a.copy()), Ok(0));
        let b = Tensor::from_slice(&[0u8, 11, 250]);
        assert_eq!(largest_difference(&a, &b), Ok(5));
        assert!(agree(5).unwrap_err().contains("up to 5 steps"));
        let short = Tensor::from_slice(&[0u8, 10]);
        assert!(largest_difference(&a, &short).is_err());
    }
}
