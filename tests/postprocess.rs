//! Post-processing: transformers' `post_process_depth_estimation` and
//! `post_process_semantic_segmentation` on fixture model outputs (`tests/fixtures/processors`),
//! and the annotator's shapes, value ranges, colormaps, depth ranges and scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use visiond::config::{Colormap, DepthRange, OverlayConfig, OverlayMode, Task};
use visiond::frames::FrameResults;
use visiond::processing::{
    Annotator, EMA_WEIGHT, colormap_table, depth16_to_vec, palette, resize_depth,
    segmentation_labels, segmentation_labels_with_budget,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/processors")
}

fn postprocess_cases(kind: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    let meta: Value = serde_json::from_str(&text).unwrap();
    meta["postprocess"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .cloned()
        .collect()
}

fn load(case: &Value) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(case["file"].as_str().unwrap()))
        .unwrap()
        .into_iter()
        .collect()
}

/// The first GPU where there is one (post-processing runs on the model's device), else the CPU.
fn device() -> Device {
    Device::cuda_if_available()
}

fn target(case: &Value) -> (i64, i64) {
    let t = case["target_size"].as_array().unwrap();
    (t[0].as_i64().unwrap(), t[1].as_i64().unwrap())
}

fn overlay(mode: OverlayMode, range: DepthRange) -> OverlayConfig {
    OverlayConfig {
        mode,
        range,
        ..OverlayConfig::default()
    }
}

fn frame(h: i64, w: i64) -> Tensor {
    Tensor::arange(h * w * 3, (Kind::Int64, Device::Cpu))
        .remainder(251)
        .to_kind(Kind::Uint8)
        .view([h, w, 3])
}

fn pixel(t: &Tensor, y: i64, x: i64) -> [u8; 3] {
    let v = Vec::<u8>::try_from(t.get(y).get(x)).unwrap();
    [v[0], v[1], v[2]]
}

/// A depth map [h, w] rising left to right from `lo` to `hi`.
fn ramp(h: i64, w: i64, lo: f64, hi: f64) -> Tensor {
    Tensor::linspace(lo, hi, w, (Kind::Float, Device::Cpu))
        .view([1, w])
        .expand([h, w], true)
        .contiguous()
}

#[test]
fn depth_resize_matches_post_process_depth_estimation() {
    for case in postprocess_cases("depth") {
        let data = load(&case);
        let (h, w) = target(&case);
        let depth = data["predicted_depth"].get(0).to_device(device());
        let got = resize_depth(&depth, h, w).unwrap().to_device(Device::Cpu);
        let reference = &data["resized"];
        assert_eq!(got.size(), reference.size());
        let error = (&got - reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        println!(
            "{}: {:?} -> {h}x{w}, max abs error {error:.3e} (values up to {scale:.3})",
            case["name"],
            depth.size()
        );
        assert!(error <= 1e-5 * scale.max(1.0), "{}: {error}", case["name"]);
    }
}

#[test]
fn segmentation_argmax_matches_post_process_semantic_segmentation() {
    for case in postprocess_cases("segmentation") {
        let data = load(&case);
        let (h, w) = target(&case);
        let logits = data["logits"].get(0).to_device(device());
        let reference = &data["segmentation"].to_device(device());
        for (what, labels) in [
            (
                "all classes at once",
                segmentation_labels(&logits, h, w).unwrap(),
            ),
            // One class a slice: the running maximum must give the same map.
            (
                "one class a slice",
                segmentation_labels_with_budget(&logits, h, w, 1).unwrap(),
            ),
            (
                "two classes a slice",
                segmentation_labels_with_budget(&logits, h, w, 2 * h * w).unwrap(),
            ),
        ] {
            assert_eq!(labels.size(), [h, w]);
            let mismatched = labels
                .ne_tensor(reference)
                .sum(Kind::Int64)
                .int64_value(&[]);
            println!(
                "{} ({what}): {mismatched} of {} pixels differ",
                case["name"],
                h * w
            );
            assert_eq!(mismatched, 0, "{} ({what})", case["name"]);
        }
    }
}

#[test]
fn depth_overlay_shapes_and_modes() {
    let (h, w) = (30, 40);
    let depth = ramp(12, 16, 1.0, 5.0);
    let image = frame(h, w);
    for (mode, width) in [
        (OverlayMode::Blend, w),
        (OverlayMode::SideBySide, 2 * w),
        (OverlayMode::MapOnly, w),
    ] {
        let mut annotator =
            Annotator::new(&overlay(mode, DepthRange::PerFrame), Task::Depth, vec![]);
        let out = annotator.annotate(&image, &depth).unwrap();
        assert_eq!(out.frame.size(), [h, width, 3], "{mode:?}");
        assert_eq!(out.frame.kind(), Kind::Uint8);
        assert!(out.raw_depth.is_none());
        let FrameResults::Depth { min, mean, max } = out.results else {
            panic!("depth results expected")
        };
        // Bicubic overshoots a little at the ends; the stats are those of the resized map.
        let resized = resize_depth(&depth, h, w).unwrap();
        assert!((min - resized.min().double_value(&[])).abs() < 1e-6);
        assert!((max - resized.max().double_value(&[])).abs() < 1e-6);
        assert!((mean - 3.0).abs() < 0.05, "{mean}");
        if mode == OverlayMode::SideBySide {
            let left = out.frame.narrow(1, 0, w);
            assert!(left.equal(&image), "the frame half is the frame");
        }
    }
    // A batch dimension of 1 is accepted; a wrong rank is an error, not a panic.
    let mut annotator = Annotator::new(&OverlayConfig::default(), Task::Depth, vec![]);
    assert!(annotator.annotate(&image, &depth.unsqueeze(0)).is_ok());
    let e = annotator
        .annotate(&image, &depth.view([1, 1, 12, 16]))
        .unwrap_err();
    assert!(e.to_string().contains("expected depth [h, w]"), "{e}");
    let e = annotator.annotate(&depth, &depth).unwrap_err();
    assert!(e.to_string().contains("uint8 [H, W, 3]"), "{e}");
}

#[test]
fn colormap_endpoints_and_invert() {
    // A ramp at frame size: per-frame range maps the left column to entry 0, the right to 255.
    let (h, w) = (4, 64);
    let depth = ramp(h, w, -2.0, 7.0);
    for colormap in [
        Colormap::Turbo,
        Colormap::Inferno,
        Colormap::Magma,
        Colormap::Viridis,
        Colormap::Grayscale,
    ] {
        let table = colormap_table(colormap);
        for invert in [false, true] {
            let config = OverlayConfig {
                colormap,
                invert,
                ..overlay(OverlayMode::MapOnly, DepthRange::PerFrame)
            };
            let mut annotator = Annotator::new(&config, Task::Depth, vec![]);
            let out = annotator.annotate(&frame(h, w), &depth).unwrap();
            let (near, far) = if invert { (255, 0) } else { (0, 255) };
            assert_eq!(
                pixel(&out.frame, 0, 0),
                table[near],
                "{colormap:?} invert {invert}"
            );
            assert_eq!(
                pixel(&out.frame, 0, w - 1),
                table[far],
                "{colormap:?} invert {invert}"
            );
        }
    }
    assert_eq!(colormap_table(Colormap::Turbo)[0], [48, 18, 59]);
    assert_eq!(colormap_table(Colormap::Viridis)[255], [253, 231, 37]);
}

#[test]
fn blend_weights() {
    let (h, w) = (8, 8);
    let image = frame(h, w);
    let depth = ramp(h, w, 0.0, 1.0);
    let map = |alpha| {
        let config = OverlayConfig {
            alpha,
            ..overlay(OverlayMode::Blend, DepthRange::PerFrame)
        };
        Annotator::new(&config, Task::Depth, vec![])
            .annotate(&image, &depth)
            .unwrap()
            .frame
    };
    assert!(map(0.0).equal(&image));
    let only = Annotator::new(
        &overlay(OverlayMode::MapOnly, DepthRange::PerFrame),
        Task::Depth,
        vec![],
    )
    .annotate(&image, &depth)
    .unwrap()
    .frame;
    assert!(map(1.0).equal(&only));
    let half = map(0.5).to_kind(Kind::Float);
    let expected = ((image.to_kind(Kind::Float) + only.to_kind(Kind::Float)) * 0.5).round();
    assert!((half - expected).abs().max().double_value(&[]) <= 0.0);
}

#[test]
fn ema_range_follows_slowly_and_does_not_flicker() {
    let (h, w) = (16, 16);
    let image = frame(h, w);
    let mut ema = Annotator::new(
        &overlay(OverlayMode::MapOnly, DepthRange::Ema),
        Task::Depth,
        vec![],
    );
    let flat = |lo, hi| ramp(h, w, lo, hi);
    let stats = |a: &Annotator| a.ema_range().unwrap();

    ema.annotate(&image, &flat(0.0, 1.0)).unwrap();
    let (lo0, hi0) = stats(&ema);
    assert!(
        lo0.abs() < 1e-3 && (hi0 - 1.0).abs() < 1e-3,
        "first frame sets the range"
    );

    // A jump to [0, 10]: the range moves by EMA_WEIGHT of the way, not all of it.
    ema.annotate(&image, &flat(0.0, 10.0)).unwrap();
    let (_, hi1) = stats(&ema);
    let expected = hi0 + EMA_WEIGHT * (10.0 - hi0);
    assert!((hi1 - expected).abs() < 1e-2, "{hi1} vs {expected}");
    // ...and converges when the scene stays.
    for _ in 0..100 {
        ema.annotate(&image, &flat(0.0, 10.0)).unwrap();
    }
    assert!((stats(&ema).1 - 10.0).abs() < 1e-2);

    // Extremes that jitter by ±20% frame to frame: per-frame colours swing, EMA's barely move.
    let mut per_frame = Annotator::new(
        &overlay(OverlayMode::MapOnly, DepthRange::PerFrame),
        Task::Depth,
        vec![],
    );
    let probe = |a: &mut Annotator, hi: f64| {
        // Near end 0, far end jittering, everything between at depth 5.
        let cpu = (Kind::Float, Device::Cpu);
        let depth = Tensor::cat(
            &[
                Tensor::zeros([h, 1], cpu),
                Tensor::full([h, w - 2], 5.0, cpu),
                Tensor::full([h, 1], hi, cpu),
            ],
            1,
        );
        let out = a.annotate(&image, &depth).unwrap();
        pixel(&out.frame, h / 2, w / 2)
    };
    let swing = |a: &mut Annotator| {
        let colours: Vec<[u8; 3]> = [8.0, 12.0, 8.0, 12.0, 8.0, 12.0]
            .iter()
            .map(|&hi| probe(a, hi))
            .collect();
        colours
            .windows(2)
            .map(|p| {
                (0..3)
                    .map(|c| (p[0][c] as i32 - p[1][c] as i32).abs())
                    .max()
                    .unwrap()
            })
            .max()
            .unwrap()
    };
    let (ema_swing, frame_swing) = (swing(&mut ema), swing(&mut per_frame));
    println!("colour swing of a constant-depth pixel: ema {ema_swing}, per_frame {frame_swing}");
    assert!(
        ema_swing * 3 < frame_swing,
        "ema {ema_swing} vs per_frame {frame_swing}"
    );
}

#[test]
fn fixed_range_and_raw_depth() {
    let (h, w) = (4, 5);
    let depth = Tensor::from_slice(&[-1.0f32, 0.0, 5.0, 10.0, 20.0])
        .view([1, w])
        .expand([h, w], true)
        .contiguous();
    let config = OverlayConfig {
        colormap: Colormap::Grayscale,
        ..overlay(OverlayMode::MapOnly, DepthRange::Fixed([0.0, 10.0]))
    };
    let mut annotator = Annotator::new(&config, Task::Depth, vec![]).with_raw_depth(true);
    let out = annotator.annotate(&frame(h, w), &depth).unwrap();
    // Same size in and out: bicubic at scale 1 is the identity.
    let raw = out.raw_depth.expect("raw depth requested");
    assert_eq!(raw.size(), [h, w]);
    let samples = depth16_to_vec(&raw).unwrap();
    assert_eq!(&samples[..5], &[0, 0, 32768, 65535, 65535]);
    let grey: Vec<u8> = (0..w).map(|x| pixel(&out.frame, 0, x)[0]).collect();
    assert_eq!(grey, [0, 0, 128, 255, 255]);
    let FrameResults::Depth { min, max, .. } = out.results else {
        panic!()
    };
    assert_eq!((min, max), (-1.0, 20.0));
}

#[test]
fn flat_and_non_finite_depth_do_not_break() {
    let mut annotator = Annotator::new(
        &overlay(OverlayMode::MapOnly, DepthRange::PerFrame),
        Task::Depth,
        vec![],
    );
    let out = annotator
        .annotate(
            &frame(6, 6),
            &Tensor::full([6, 6], 3.0, (Kind::Float, Device::Cpu)),
        )
        .unwrap();
    assert_eq!(pixel(&out.frame, 3, 3), colormap_table(Colormap::Turbo)[0]);
    let nan = Tensor::full([6, 6], f64::NAN, (Kind::Half, Device::Cpu));
    assert!(annotator.annotate(&frame(6, 6), &nan).is_ok());
}

#[test]
fn segmentation_overlay_palette_and_histogram() {
    let case = postprocess_cases("segmentation").remove(0);
    let data = load(&case);
    let (h, w) = target(&case);
    let logits = data["logits"].get(0);
    let reference = &data["segmentation"];
    let labels: Vec<String> = ["wall", "building", "sky", "floor", "tree"]
        .map(String::from)
        .into();
    let mut annotator = Annotator::new(
        &overlay(OverlayMode::MapOnly, DepthRange::PerFrame),
        Task::Segmentation,
        labels.clone(),
    );
    let out = annotator
        .annotate(&frame(h, w), &logits.unsqueeze(0))
        .unwrap();
    assert_eq!(out.frame.size(), [h, w, 3]);
    let colours = palette(5);
    for (y, x) in [(0, 0), (h / 2, w / 3), (h - 1, w - 1)] {
        let class = reference.int64_value(&[y, x]) as usize;
        assert_eq!(pixel(&out.frame, y, x), colours[class]);
    }
    let FrameResults::Segmentation { histogram } = out.results else {
        panic!()
    };
    let total: f64 = histogram.iter().map(|(_, f)| f).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(
        histogram.windows(2).all(|p| p[0].1 >= p[1].1),
        "largest first"
    );
    for (label, fraction) in &histogram {
        let class = labels.iter().position(|l| l == label).unwrap() as i64;
        let count = reference.eq(class).sum(Kind::Int64).int64_value(&[]);
        assert!((fraction - count as f64 / (h * w) as f64).abs() < 1e-12);
    }
    let json = serde_json::to_value(FrameResults::Segmentation { histogram }).unwrap();
    assert_eq!(json["kind"], "segmentation");

    // 150 classes: the ADE20K palette; blend keeps the frame size.
    let logits = Tensor::randn([150, 8, 8], (Kind::Float, Device::Cpu));
    let mut annotator = Annotator::new(&OverlayConfig::default(), Task::Segmentation, vec![]);
    let out = annotator.annotate(&frame(20, 30), &logits).unwrap();
    assert_eq!(out.frame.size(), [20, 30, 3]);
    let FrameResults::Segmentation { histogram } = out.results else {
        panic!()
    };
    assert!(
        histogram.iter().all(|(l, _)| l.starts_with("class ")),
        "unnamed classes"
    );
}

#[test]
fn classification_top_k_threshold_and_smoothing() {
    let labels: Vec<String> = ["letter", "form", "email", "memo"].map(String::from).into();
    let config = OverlayConfig {
        top_k: 2,
        smoothing_frames: 2,
        min_score: 0.2,
        ..OverlayConfig::default()
    };
    let mut annotator = Annotator::new(&config, Task::Classification, labels);
    let image = frame(10, 12);
    let probs = |p: [f32; 4]| Tensor::from_slice(&p).log();
    let top = |a: &mut Annotator, logits: &Tensor| {
        let out = a.annotate(&image, logits).unwrap();
        assert!(
            out.frame.equal(&image),
            "classification passes the frame through"
        );
        match out.results {
            FrameResults::Classes { top_k } => top_k,
            other => panic!("{other:?}"),
        }
    };
    let first = top(&mut annotator, &probs([0.1, 0.6, 0.25, 0.05]));
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].0, "form");
    assert!((first[0].1 - 0.6).abs() < 1e-6 && (first[1].1 - 0.25).abs() < 1e-6);
    // Averaged with the previous frame: letter (0.1 + 0.7) / 2 = 0.4 beats form (0.6 + 0.1) / 2.
    let second = top(&mut annotator, &probs([0.7, 0.1, 0.1, 0.1]).unsqueeze(0));
    assert_eq!(second[0].0, "letter");
    assert!((second[0].1 - 0.4).abs() < 1e-6);
    assert!((second[1].1 - 0.35).abs() < 1e-6);
    // Only the last 2 frames count, and scores under min_score are dropped.
    let third = top(&mut annotator, &probs([0.7, 0.1, 0.1, 0.1]));
    assert_eq!(third.len(), 1, "{third:?}");
    assert!((third[0].1 - 0.7).abs() < 1e-6);
    let json = serde_json::to_string(&FrameResults::Classes { top_k: third }).unwrap();
    assert!(
        json.starts_with(r#"{"kind":"classes","top_k":[{"label":"letter","score":0.7"#),
        "{json}"
    );
}

#[test]
fn without_a_picture_the_results_are_the_same_and_nothing_is_drawn() {
    let (h, w) = (12, 20);
    let input = frame(h, w);
    let depth = ramp(6, 10, 0.5, 9.0);
    let config = overlay(OverlayMode::Blend, DepthRange::PerFrame);
    let drawn = Annotator::new(&config, Task::Depth, vec![])
        .with_raw_depth(true)
        .annotate(&input, &depth)
        .unwrap();
    let bare = Annotator::new(&config, Task::Depth, vec![])
        .with_raw_depth(true)
        .with_picture(false)
        .annotate(&input, &depth)
        .unwrap();
    assert_eq!(
        serde_json::to_value(&bare.results).unwrap(),
        serde_json::to_value(&drawn.results).unwrap()
    );
    // The raw depth is not a picture: made either way, the same.
    assert_eq!(
        depth16_to_vec(&bare.raw_depth.unwrap()).unwrap(),
        depth16_to_vec(&drawn.raw_depth.unwrap()).unwrap()
    );
    assert!(bare.frame.equal(&input), "the frame as it came");
    assert!(!drawn.frame.equal(&input), "the blend changed it");

    // Segmentation: the same class histogram, no palette drawn.
    let logits = Tensor::randn([5, 6, 10], (Kind::Float, Device::Cpu));
    let seg = |picture: bool| {
        Annotator::new(&OverlayConfig::default(), Task::Segmentation, vec![])
            .with_picture(picture)
            .annotate(&input, &logits)
            .unwrap()
    };
    let (drawn, bare) = (seg(true), seg(false));
    assert_eq!(
        serde_json::to_value(&bare.results).unwrap(),
        serde_json::to_value(&drawn.results).unwrap()
    );
    assert!(bare.frame.equal(&input));
    assert!(!drawn.frame.equal(&input));
}
