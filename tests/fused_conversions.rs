//! The fused colour conversions (src/runtime/native/kernels.cuh): the per-pixel code the CUDA
//! kernels run, here run over CPU tensors by the shim, must make exactly the bytes of the
//! tensor-op conversions (which tests/frame_path.rs holds to GStreamer's `videoconvert`), for
//! every colour setting, odd sizes and strided planes; and NVRTC must compile the kernels
//! (it needs no GPU to do so).

use tch::{Device, Kind, Tensor};
use visiond::frames::YuvColour;
use visiond::processing::{
    Yuv420, rgb_to_i420, rgb_to_yuv_coefficients, yuv_to_rgb_coefficients, yuv420_to_rgb,
};
use visiond::runtime::native::{self, YuvToRgbParams};

const SIZES: [(i64, i64); 9] = [
    (1, 1),
    (1, 2),
    (2, 1),
    (3, 5),
    (4, 6),
    (7, 9),
    (16, 30),
    (33, 17),
    (90, 160),
];

fn colours() -> Vec<YuvColour> {
    let mut all = Vec::new();
    for (kr, kb, full_range) in [
        (0.299, 0.114, false),
        (0.2126, 0.0722, false),
        (0.2126, 0.0722, true),
    ] {
        for (h, v) in [(false, false), (true, false), (false, true), (true, true)] {
            all.push(YuvColour {
                kr,
                kb,
                full_range,
                chroma_h_cosited: h,
                chroma_v_cosited: v,
            });
        }
    }
    all
}

fn random_bytes(shape: &[i64]) -> Tensor {
    Tensor::randint(256, shape, (Kind::Uint8, Device::Cpu))
}

/// `rows x cols x channels` bytes as a view whose rows are `pad` bytes longer than needed.
fn padded(rows: i64, cols: i64, channels: i64, pad: i64) -> Tensor {
    let storage = random_bytes(&[rows, cols * channels + pad]);
    storage
        .narrow(1, 0, cols * channels)
        .view([rows, cols, channels])
}

fn largest_difference(a: &Tensor, b: &Tensor) -> i64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Int) - b.to_kind(Kind::Int))
        .abs()
        .max()
        .int64_value(&[])
}

fn params(colour: &YuvColour, filtered: bool) -> YuvToRgbParams {
    YuvToRgbParams {
        filtered,
        h_cosited: colour.chroma_h_cosited,
        v_cosited: colour.chroma_v_cosited,
        coefficients: yuv_to_rgb_coefficients(colour).map(|c| c as i32),
    }
}

#[test]
fn i420_to_rgb_matches_the_tensor_ops_exactly() {
    tch::manual_seed(1);
    for colour in colours() {
        for (h, w) in SIZES {
            let (ch, cw) = ((h + 1) / 2, (w + 1) / 2);
            let y = padded(h, w, 1, 3).squeeze_dim(2);
            let u = padded(ch, cw, 1, 1).squeeze_dim(2);
            let v = padded(ch, cw, 1, 1).squeeze_dim(2);
            let fused = native::fused_yuv420_to_rgb(&y, &u, &v, &params(&colour, false)).unwrap();
            let reference = yuv420_to_rgb(
                Yuv420::I420 {
                    y: &y,
                    u: &u,
                    v: &v,
                },
                &colour,
            )
            .unwrap();
            assert_eq!(
                largest_difference(&fused, &reference),
                0,
                "I420 {h}x{w} {colour:?}"
            );
        }
    }
}

#[test]
fn nv12_to_rgb_matches_the_tensor_ops_exactly() {
    tch::manual_seed(2);
    for colour in colours() {
        for (h, w) in SIZES {
            let y = padded(h, w, 1, 5).squeeze_dim(2);
            let uv = padded((h + 1) / 2, (w + 1) / 2, 2, 2);
            let (u, v) = (uv.select(2, 0), uv.select(2, 1));
            let fused = native::fused_yuv420_to_rgb(&y, &u, &v, &params(&colour, true)).unwrap();
            let reference = yuv420_to_rgb(Yuv420::Nv12 { y: &y, uv: &uv }, &colour).unwrap();
            assert_eq!(
                largest_difference(&fused, &reference),
                0,
                "NV12 {h}x{w} {colour:?}"
            );
        }
    }
}

#[test]
fn rgb_to_i420_and_nv12_match_the_tensor_ops_exactly_and_write_nothing_else() {
    tch::manual_seed(3);
    for colour in colours() {
        for (h, w) in SIZES {
            let (ch, cw) = ((h + 1) / 2, (w + 1) / 2);
            // A transposed view: the kernel takes any strides.
            let rgb = random_bytes(&[w, h, 3]).transpose(0, 1);
            let (y, u, v) = rgb_to_i420(&rgb, &colour).unwrap();
            let coefficients = rgb_to_yuv_coefficients(&colour);
            let (hc, vc) = (colour.chroma_h_cosited, colour.chroma_v_cosited);

            // I420 planes with padded rows, in one buffer of sentinel bytes.
            let (y_stride, c_stride) = (w + 3, cw + 1);
            let buffer = Tensor::full(
                [h * y_stride + 2 * ch * c_stride],
                7,
                (Kind::Uint8, Device::Cpu),
            );
            let yv = buffer.as_strided([h, w], [y_stride, 1], 0);
            let uv_ = buffer.as_strided([ch, cw], [c_stride, 1], h * y_stride);
            let vv = buffer.as_strided([ch, cw], [c_stride, 1], h * y_stride + ch * c_stride);
            native::fused_rgb_to_yuv420(&rgb, [&yv, &uv_, &vv], hc, vc, &coefficients).unwrap();
            let context = format!("I420 {h}x{w} {colour:?}");
            assert_eq!(largest_difference(&yv, &y), 0, "{context}: Y");
            assert_eq!(largest_difference(&uv_, &u), 0, "{context}: U");
            assert_eq!(largest_difference(&vv, &v), 0, "{context}: V");
            let written = h * w + 2 * ch * cw;
            let untouched = buffer.eq(7).sum(Kind::Int64).int64_value(&[]);
            let sentinels_in_planes = yv.eq(7).sum(Kind::Int64).int64_value(&[])
                + uv_.eq(7).sum(Kind::Int64).int64_value(&[])
                + vv.eq(7).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(
                untouched - sentinels_in_planes,
                buffer.numel() as i64 - written,
                "{context}: the padding was written"
            );

            // NV12: U and V interleaved in one plane.
            let nv12 = Tensor::zeros([h * w + ch * cw * 2], (Kind::Uint8, Device::Cpu));
            let yv = nv12.as_strided([h, w], [w, 1], 0);
            let interleaved = nv12.as_strided([ch, cw, 2], [cw * 2, 2, 1], h * w);
            let (uv_, vv) = (interleaved.select(2, 0), interleaved.select(2, 1));
            native::fused_rgb_to_yuv420(&rgb, [&yv, &uv_, &vv], hc, vc, &coefficients).unwrap();
            assert_eq!(largest_difference(&yv, &y), 0, "NV12 {context}: Y");
            assert_eq!(largest_difference(&uv_, &u), 0, "NV12 {context}: U");
            assert_eq!(largest_difference(&vv, &v), 0, "NV12 {context}: V");
        }
    }
}

#[test]
fn wrong_planes_are_refused_with_the_plane_named() {
    let y = random_bytes(&[4, 6]);
    let u = random_bytes(&[2, 3]);
    let wrong = random_bytes(&[2, 4]);
    let colour = colours()[0];
    let e = native::fused_yuv420_to_rgb(&y, &u, &wrong, &params(&colour, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("V plane: expected uint8 [2, 3]"), "{e}");
    let floats = Tensor::zeros([4, 6, 3], (Kind::Float, Device::Cpu));
    let e = native::fused_rgb_to_yuv420(
        &floats,
        [&y, &u, &u.copy()],
        false,
        false,
        &rgb_to_yuv_coefficients(&colour),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected uint8 [H, W, 3] RGB"), "{e}");
    // The planes given are left as they were.
    assert_eq!(largest_difference(&u, &u.copy()), 0);
}

#[test]
fn nvrtc_compiles_the_kernels_without_a_gpu() {
    assert!(
        native::shim_has_cuda(),
        "this build has no CUDA shim (scripts/setup installs the headers it needs)"
    );
    // Hopper (the H100/H200 the device checks run on), Ampere, Orin (Jetson): CUBINs.
    for arch in [90, 80, 87] {
        let bytes = native::compile_kernels(arch).unwrap_or_else(|e| panic!("sm_{arch}: {e}"));
        assert!(bytes > 1000, "sm_{arch}: a {bytes}-byte image");
    }
    // A device newer than this NVRTC knows gets PTX, which its driver compiles.
    let bytes = native::compile_kernels(990).unwrap();
    assert!(bytes > 1000, "PTX of {bytes} bytes");
}
