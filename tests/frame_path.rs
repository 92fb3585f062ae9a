//! The frame path's formats and copies, with real GStreamer and a real (tiny) model: frames
//! decoded to NV12 or I420 are converted on the model's device exactly as GStreamer would
//! convert them, the encoder gets the I420 GStreamer would make (made on CUDA; on a CPU the
//! encoder's own `videoconvert` makes it from RGB), NV12 and I420 sources are
//! annotated as their RGB versions are, and a frame's memory is not copied twice on its way in.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tch::Tensor;
use visiond::config::Config;
use visiond::frames::{Frame, FrameLayout, PixelFormat, Pixels};
use visiond::models::checkpoint::{self, LoadOptions};
use visiond::pipeline::engine::Engine;
use visiond::processing::Preprocessor;
use visiond::runtime::{
    Annotation, BatchInference, Execution, FrameFormats, FrameStager, LoadError, ModelRunner,
    ModelRuntime, TorchInference, download_picture, staged_tensors,
};

use common::*;

/// The runtime of the tiny DPT fixture on the CPU, taking frames in `formats`.
fn inference(formats: FrameFormats) -> TorchInference {
    let loaded = checkpoint::open(
        &visiond::config::ModelSource::Path(fixture("dpt-vit")),
        &LoadOptions::default(),
    )
    .unwrap();
    let preprocessor =
        Preprocessor::from_model_dir(&loaded.info.path, &loaded.info.architecture, None).unwrap();
    let runner = ModelRunner::for_model(loaded.model, &loaded.info, Execution::Eager);
    TorchInference::new(runner, loaded.info, preprocessor).with_frames(formats)
}

/// Random bytes in the layout `caps` describe.
fn random_frame(caps: &str, seed: u64) -> (gst_video::VideoInfo, gst::Buffer) {
    gst::init().unwrap();
    let info = gst_video::VideoInfo::from_caps(&caps.parse::<gst::Caps>().unwrap()).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let bytes: Vec<u8> = (0..info.size()).map(|_| rng.u8(..)).collect();
    (info, gst::Buffer::from_slice(bytes))
}

/// The frame the source would deliver for this buffer.
fn frame(info: &gst_video::VideoInfo, buffer: gst::Buffer) -> Frame {
    Frame {
        pipeline: 0,
        seq: 0,
        pts: None,
        duration: None,
        captured: std::time::Instant::now(),
        resumed: false,
        width: info.width(),
        height: info.height(),
        fps: info.fps(),
        layout: FrameLayout::from_info(info, None).unwrap(),
        pixels: Pixels::Host(buffer),
    }
}

/// What GStreamer's `videoconvert` makes of `buffer` as `caps`: each plane's rows, unpadded.
fn videoconvert(info: &gst_video::VideoInfo, buffer: &gst::Buffer, caps: &str) -> Vec<Vec<u8>> {
    let (pipeline, sink) = play(&format!(
        "appsrc name=src format=time ! videoconvert ! capsfilter caps={caps} \
         ! appsink name=sink sync=false"
    ));
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&info.to_caps().unwrap()));
    src.push_buffer(buffer.copy()).unwrap();
    src.end_of_stream().unwrap();
    let sample = sink.pull_sample().unwrap();
    let out = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    let planes = planes(&out, sample.buffer().unwrap());
    pipeline.set_state(gst::State::Null).unwrap();
    planes
}

/// A buffer's planes (rows without their padding), as its info lays them out.
fn planes(info: &gst_video::VideoInfo, buffer: &gst::BufferRef) -> Vec<Vec<u8>> {
    let layout = FrameLayout::from_info(info, None).unwrap();
    let map = buffer.map_readable().unwrap();
    (0..layout.planes.len())
        .map(|p| {
            let (rows, row_bytes) = layout.plane_extent(p);
            let plane = layout.planes[p];
            (0..rows)
                .flat_map(|r| {
                    let start = plane.offset + r * plane.stride;
                    map[start..start + row_bytes].to_vec()
                })
                .collect()
        })
        .collect()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.contiguous().flatten(0, -1)).unwrap()
}

fn largest_difference(a: &[u8], b: &[u8]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn nv12_and_i420_convert_on_the_device_exactly_as_gstreamer_converts_them() {
    let stager = inference(FrameFormats::Native).stager();
    let raw = "video/x-raw,framerate=30/1";
    let cases = [
        // Sizes up to 576 lines default to BT.601, chroma between samples.
        format!("{raw},format=NV12,width=64,height=48"),
        format!("{raw},format=I420,width=64,height=48"),
        // Odd sizes: half-size chroma rounds up, rows are padded.
        format!("{raw},format=NV12,width=81,height=61"),
        format!("{raw},format=I420,width=81,height=61"),
        // HD defaults to BT.709 with chroma co-sited on the even columns.
        format!("{raw},format=NV12,width=1920,height=1080"),
        format!("{raw},format=I420,width=1280,height=720"),
        // What the caps say wins: matrix, full range, chroma siting.
        format!("{raw},format=NV12,width=82,height=62,colorimetry=bt709,chroma-site=jpeg"),
        format!("{raw},format=NV12,width=64,height=48,colorimetry=bt601,chroma-site=mpeg2"),
        format!("{raw},format=NV12,width=64,height=48,colorimetry=1:4:0:0"),
        format!("{raw},format=I420,width=64,height=48,colorimetry=1:4:0:0"),
        format!("{raw},format=NV12,width=64,height=48,colorimetry=bt601,chroma-site=cosited"),
        // RGB goes through as it came (rows padded to 4 bytes).
        format!("{raw},format=RGB,width=81,height=61"),
    ];
    for (seed, caps) in cases.iter().enumerate() {
        let (info, buffer) = random_frame(caps, seed as u64);
        let expected = videoconvert(&info, &buffer, "video/x-raw,format=RGB").remove(0);
        let mut frame = frame(&info, buffer);
        stager.stage(&mut frame).unwrap();
        let (_, rgb) = staged_tensors(&frame).expect("the frame is staged on the device");
        assert_eq!(
            rgb.size(),
            [i64::from(info.height()), i64::from(info.width()), 3]
        );
        let difference = largest_difference(&bytes(&rgb), &expected);
        assert_eq!(difference, 0, "{caps}: off by {difference}");
    }
}

#[test]
fn the_encoder_gets_the_i420_gstreamer_would_make() {
    let raw = "video/x-raw,format=RGB,framerate=30/1";
    for (seed, size) in [
        "64,height=48",
        "81,height=61",
        "1280,height=720",
        "83,height=62",
    ]
    .iter()
    .enumerate()
    {
        let caps = format!("{raw},width={size}");
        let (info, buffer) = random_frame(&caps, 100 + seed as u64);
        let rgb = {
            let layout = FrameLayout::from_info(&info, None).unwrap();
            let map = buffer.map_readable().unwrap();
            let stride = layout.planes[0].stride;
            let rows: Vec<u8> = (0..info.height() as usize)
                .flat_map(|r| map[r * stride..r * stride + 3 * info.width() as usize].to_vec())
                .collect();
            Tensor::from_slice(&rows).view([i64::from(info.height()), i64::from(info.width()), 3])
        };
        let picture = download_picture(&rgb, PixelFormat::I420, info.fps()).unwrap();
        // Into the caps the picture is announced with (matrix, range, chroma siting).
        let announced = picture.layout.info.to_caps().unwrap().to_string();
        let expected = videoconvert(&info, &buffer, &format!("\"{announced}\""));
        let got = planes(&picture.layout.info, picture.bytes.into_buffer().as_ref());
        for (plane, (got, expected)) in ["Y", "U", "V"].iter().zip(got.iter().zip(&expected)) {
            let difference = largest_difference(got, expected);
            assert_eq!(difference, 0, "{caps}: {plane} off by {difference}");
        }
    }
}

#[test]
fn on_the_cpu_the_model_reads_gstreamers_own_memory() {
    // The hook: the staged tensors' memory is the buffer's, and the counter saw no copy.
    let stager = inference(FrameFormats::Native).stager();
    let raw = "video/x-raw,framerate=30/1";
    for (seed, caps) in [
        format!("{raw},format=NV12,width=96,height=72"),
        format!("{raw},format=I420,width=81,height=61"),
        format!("{raw},format=RGB,width=81,height=61"),
    ]
    .iter()
    .enumerate()
    {
        let (info, buffer) = random_frame(caps, 200 + seed as u64);
        let memory = {
            let map = buffer.map_readable().unwrap();
            map.as_ptr() as usize..map.as_ptr() as usize + map.len()
        };
        let mut frame = frame(&info, buffer);
        stager.stage(&mut frame).unwrap();
        let (input, rgb) = staged_tensors(&frame).unwrap();
        assert_eq!(
            input.data_ptr() as usize,
            memory.start,
            "{caps}: the input is a copy"
        );
        if info.format() == gst_video::VideoFormat::Rgb {
            assert!(
                memory.contains(&(rgb.data_ptr() as usize)),
                "{caps}: RGB frames reach the model without a copy"
            );
        }
    }
    let counters = stager.counters();
    assert_eq!((counters.frames, counters.host_copies), (3, 0));
}

/// A frame's bytes that say when GStreamer lets go of them.
struct Watched {
    bytes: Vec<u8>,
    freed: Arc<AtomicBool>,
}

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::SeqCst);
    }
}

#[test]
fn staged_tensors_keep_the_frames_memory_they_read_after_the_frame_is_gone() {
    // On the CPU the staged tensors read GStreamer's buffer in place: they, not the frame,
    // must keep it mapped, however long they live.
    let stager = inference(FrameFormats::Native).stager();
    let raw = "video/x-raw,framerate=30/1";
    for (seed, caps) in [
        format!("{raw},format=NV12,width=96,height=72"),
        format!("{raw},format=RGB,width=81,height=61"),
    ]
    .iter()
    .enumerate()
    {
        let (info, buffer) = random_frame(caps, 300 + seed as u64);
        let original = buffer.map_readable().unwrap().to_vec();
        let freed = Arc::new(AtomicBool::new(false));
        let buffer = gst::Buffer::from_slice(Watched {
            bytes: original.clone(),
            freed: freed.clone(),
        });
        let mut frame = frame(&info, buffer);
        stager.stage(&mut frame).unwrap();
        let (input, rgb) = staged_tensors(&frame).unwrap();
        let rgb_before = bytes(&rgb);
        drop(frame);
        assert!(
            !freed.load(Ordering::SeqCst),
            "{caps}: the frame's memory was freed while its staged tensors still read it"
        );
        assert_eq!(bytes(&input), original, "{caps}");
        assert_eq!(bytes(&rgb), rgb_before, "{caps}");
        drop((input, rgb));
        assert!(
            freed.load(Ordering::SeqCst),
            "{caps}: the frame's memory outlived every tensor reading it"
        );
    }
}

#[test]
fn on_the_cpu_pictures_go_out_as_rgb_for_the_encoders_videoconvert() {
    // GStreamer's SIMD conversion to I420 beats libtorch's integer ops on a CPU; on CUDA the
    // device makes the I420 (the test above checks those bytes against videoconvert's).
    let mut inference = inference(FrameFormats::Auto);
    let annotation = Annotation {
        overlay: Default::default(),
        raw_depth: false,
        picture: true,
    };
    inference.attach(0, &annotation);
    let (info, buffer) = random_frame(
        "video/x-raw,framerate=30/1,format=RGB,width=64,height=48",
        9,
    );
    let mut frame = frame(&info, buffer);
    inference.stager().stage(&mut frame).unwrap();
    let mut processed = inference.process(vec![frame]).pop().unwrap().unwrap();
    processed.resolve(true).unwrap();
    let picture = processed.annotated.expect("a picture");
    assert_eq!(picture.layout.format, PixelFormat::Rgb);
    assert_eq!((picture.layout.width, picture.layout.height), (64, 48));
}

/// Runs `pipelines` on the tiny DPT taking frames in `formats`; returns the stager's counters.
fn run_engine(config: &Config, formats: FrameFormats) -> visiond::runtime::StageCounters {
    let stagers: Mutex<Vec<Arc<dyn FrameStager>>> = Mutex::new(Vec::new());
    let loader = |name: &str| -> Result<ModelRuntime, LoadError> {
        let model = &config.daemon.models[name];
        let runtime = visiond::runtime::load_with(name, model, formats)?;
        stagers.lock().unwrap().push(runtime.stager.clone());
        Ok(runtime)
    };
    let reports = Engine::start(config, &loader).unwrap().wait();
    for report in &reports {
        assert_eq!((report.frames_out, report.dropped), (FRAMES, 0), "{report}");
    }
    stagers.lock().unwrap()[0].counters()
}

const FRAMES: u64 = 6;

/// The decoded frames of a lossless recording, each as its I420 bytes.
fn decoded_frames(path: &Path) -> Vec<Vec<u8>> {
    let (pipeline, sink) = play(&format!(
        "filesrc location=\"{}\" ! matroskademux ! h264parse ! avdec_h264 \
         ! video/x-raw,format=I420 ! appsink name=sink sync=false",
        path.display()
    ));
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        frames.push(planes(&info, sample.buffer().unwrap()).concat());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    frames
}

#[test]
fn nv12_and_i420_sources_give_the_annotated_frames_rgb_ones_do() {
    // Each source once as the decoder made it (converted on the device) and once converted to
    // RGB by GStreamer, recorded losslessly: the published frames must agree.
    let out = tempfile::tempdir().unwrap();
    let tree = |run: &str| {
        let pipelines: Vec<Pipeline> = ["NV12", "I420"]
            .iter()
            .map(|format| {
                let name = format!("{}-{run}", format.to_lowercase());
                // A `launch:` source is live to the daemon: without reconnects it simply ends.
                let source = Source::launch(&format!(
                    "videotestsrc pattern=smpte num-buffers={FRAMES} ! capsfilter \
                     caps=video/x-raw,format={format},width=96,height=72,framerate=30/1"
                ))
                .option("reconnect", "{ max_attempts: 0 }");
                Pipeline::new(&name)
                    .source(source)
                    .model("depth")
                    .queue("{ capacity: 4, when_full: block }")
                    .encoder("{ properties: { pass: quant, quantizer: \"0\" } }")
                    .file_sink(&out.path().join(format!("{name}.mkv")))
                    .jsonl(&out.path().join(format!("{name}.jsonl")))
            })
            .collect();
        temp_tree(
            &format!(
                "models:\n{}",
                model_yaml("depth", "dpt-vit", "device: cpu, batch: { max_size: 1 }")
            ),
            &pipelines,
        )
    };
    let (_native_dir, native) = tree("device");
    let counters = run_engine(&native, FrameFormats::Native);
    // Every frame reached the model; on the CPU not one byte of them was copied on the way.
    assert_eq!((counters.frames, counters.host_copies), (2 * FRAMES, 0));
    let (_rgb_dir, rgb) = tree("gstreamer");
    run_engine(&rgb, FrameFormats::Rgb);
    for format in ["nv12", "i420"] {
        let device = decoded_frames(&out.path().join(format!("{format}-device.mkv")));
        let gstreamer = decoded_frames(&out.path().join(format!("{format}-gstreamer.mkv")));
        assert_eq!(device.len(), FRAMES as usize, "{format}");
        assert_eq!(gstreamer.len(), FRAMES as usize, "{format}");
        for (i, (a, b)) in device.iter().zip(&gstreamer).enumerate() {
            let difference = largest_difference(a, b);
            assert!(difference <= 1, "{format} frame {i}: off by {difference}");
        }
        let results = |run: &str| -> Vec<serde_json::Value> {
            jsonl(&out.path().join(format!("{format}-{run}.jsonl")))
                .into_iter()
                .map(|line| line["results"].clone())
                .collect()
        };
        assert_eq!(results("device"), results("gstreamer"), "{format}");
    }
    // The model saw something: the depth map is not flat.
    let line = &jsonl(&out.path().join("nv12-device.jsonl"))[0];
    let (min, max) = (
        line["results"]["min"].as_f64().unwrap(),
        line["results"]["max"].as_f64().unwrap(),
    );
    assert!(max > min, "{line}");
}
