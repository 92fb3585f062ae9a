//! The C++ shim (`src/runtime/native`) as this build made it, on whatever machine runs the
//! tests: it links, answers about CUDA graphs without a GPU, and its tensor, TF32 and
//! profiler functions do what they say. The padding path of the graph runner, which runs on
//! the CPU without graphs, gives the unpadded outputs.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use visiond::models::VisionModel;
use visiond::models::arch;
use visiond::models::nn::weights::Weights;
use visiond::runtime::native::{self, FlopCounter, GraphContext, NativeError, Trace};
use visiond::runtime::{Execution, ModelRunner};

fn fixture_model(name: &str) -> Box<dyn VisionModel> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = Weights::read_safetensors(
        &[dir.join("model.safetensors")],
        Device::Cpu,
        Kind::Float,
        &dir,
    )
    .unwrap();
    let architecture = arch::architecture_of(&config, &dir.join("config.json")).unwrap();
    arch::build(&architecture, &config, weights).unwrap()
}

#[test]
fn without_a_gpu_cuda_graphs_are_reported_unavailable_and_models_run_eagerly() {
    if tch::Cuda::device_count() > 0 {
        println!("a GPU is present: this test is about machines without one");
        return;
    }
    let why = native::cuda_graphs_available(0).expect_err("no GPU, yet graphs available");
    let expected = if native::shim_has_cuda() {
        NativeError::Failed("libtorch sees no CUDA device".to_owned())
    } else {
        NativeError::NoCudaInShim
    };
    assert_eq!(why, expected);
    let error = GraphContext::new(0)
        .err()
        .expect("a graph context without a GPU");
    assert_eq!(error, expected);
    // What a model configured for CUDA graphs gets on such a machine.
    assert_eq!(
        Execution::for_device("m", Device::Cuda(0), true),
        Execution::Eager
    );
    assert_eq!(
        Execution::for_device("m", Device::Cpu, true),
        Execution::Eager
    );
}

#[test]
fn this_build_has_cuda_graphs_when_libtorch_and_the_cuda_headers_do() {
    // scripts/setup installs the headers into the torch venv; a CUDA libtorch then gets graphs.
    let libtorch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".libtorch");
    let cuda_lib = libtorch.join("lib/libtorch_cuda.so").exists();
    let headers = libtorch
        .join("../nvidia/cu13/include/crt/host_config.h")
        .exists();
    let switched_off = option_env!("VISIOND_CUDA_GRAPHS") == Some("off");
    if cuda_lib && headers && !switched_off {
        assert!(native::shim_has_cuda());
    }
    if !cuda_lib || switched_off {
        assert!(!native::shim_has_cuda());
    }
}

#[test]
fn tf32_switches_round_trip() {
    native::set_tf32(false).unwrap();
    assert_eq!(native::tf32_allowed(), Some(false));
    native::set_tf32(true).unwrap();
    assert_eq!(native::tf32_allowed(), Some(true));
}

#[test]
fn channels_last_keeps_values_and_shape_and_changes_strides() {
    let x = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).reshape([2, 3, 4, 5]);
    assert!(!native::is_channels_last(&x));
    let y = native::to_channels_last(&x).unwrap();
    assert_eq!(y.size(), [2, 3, 4, 5]);
    assert_eq!(y.stride(), [60, 1, 15, 3]);
    assert!(native::is_channels_last(&y));
    assert_eq!((&y - &x).abs().max().double_value(&[]), 0.0);
    // A 3-D tensor has no channels-last form: an error, not a crash.
    let flat = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
    let error = native::to_channels_last(&flat).unwrap_err().to_string();
    assert!(error.contains("channels_last"), "{error}");
}

#[test]
fn the_flop_counter_counts_matrix_convolution_and_attention_flops() {
    let _guard = tch::no_grad_guard();
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([16], (Kind::Float, Device::Cpu));
    let image = Tensor::randn([2, 3, 10, 10], (Kind::Float, Device::Cpu));
    let kernel = Tensor::randn([5, 3, 3, 3], (Kind::Float, Device::Cpu));
    let up = Tensor::randn([3, 4, 2, 2], (Kind::Float, Device::Cpu));
    let q = Tensor::randn([1, 2, 5, 4], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 2, 7, 4], (Kind::Float, Device::Cpu));
    let mask = Tensor::randn([1, 2, 5, 7], (Kind::Float, Device::Cpu));
    let counter = FlopCounter::start().unwrap();
    let _ = x.linear(&w, Some(&b));
    let _ = image.conv2d(&kernel, None::<Tensor>, [2, 2], [1, 1], [1, 1], 1);
    let _ = image.conv_transpose2d(&up, None::<Tensor>, [2, 2], [0, 0], [0, 0], 1, [1, 1]);
    let _ = Tensor::scaled_dot_product_attention(&q, &k, &k, Some(&mask), 0.0, false, None, false);
    let flops = counter.stop().unwrap();
    let linear = 2.0 * 4.0 * 8.0 * 16.0;
    // 10x10, kernel 3, stride 2, padding 1: 5x5 outputs.
    let conv = 2.0 * (2.0 * 5.0 * 5.0 * 5.0) * (3.0 * 3.0 * 3.0);
    // Each input pixel meets the 4 output channels' 2x2 kernels.
    let transposed = 2.0 * (2.0 * 3.0 * 10.0 * 10.0) * (4.0 * 2.0 * 2.0);
    let attention = 2.0 * 2.0 * 5.0 * 7.0 * (4.0 + 4.0);
    assert_eq!(flops, linear + conv + transposed + attention);
    // Nothing is counted once stopped.
    let counter = FlopCounter::start().unwrap();
    assert_eq!(counter.stop().unwrap(), 0.0);
}

#[test]
fn a_trace_is_written_as_chrome_json() {
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let trace = Trace::start(false).unwrap();
    let _ = x.matmul(&x.transpose(0, 1));
    let file = tempfile::NamedTempFile::new().unwrap();
    trace.stop(file.path()).unwrap();
    let text = std::fs::read_to_string(file.path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("a JSON trace");
    let names: Vec<&str> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"aten::mm"), "{names:?}");
}

/// A padded batch (3 rows in a buffer of 4; 11 rows as 8 + 4) gives the unpadded outputs.
fn padding_matches_eager(name: &str, input: [i64; 3]) {
    let [c, h, w] = input;
    let _guard = tch::no_grad_guard();
    tch::manual_seed(7);
    let x = Tensor::randn([11, c, h, w], (Kind::Float, Device::Cpu));
    let eager = fixture_model(name);
    let mut padded = ModelRunner::new(
        fixture_model(name),
        name,
        Device::Cpu,
        Kind::Float,
        Execution::Padded {
            sizes: vec![8, 1, 2, 4],
            graphs: false,
        },
    );
    for rows in [3, 11, 1, 3] {
        let batch = x.narrow(0, 0, rows);
        let expected = eager.forward(&batch).unwrap();
        let got = padded.forward(&batch).unwrap();
        assert_eq!(got.size(), expected.size(), "{name}: batch {rows}");
        let error = (&got - &expected).abs().max().double_value(&[]);
        println!("{name}: batch {rows}: max abs difference {error:.2e}");
        assert!(error <= 1e-5, "{name}: batch {rows}: {error}");
    }
}

#[test]
fn padding_a_batch_to_a_captured_size_gives_the_unpadded_outputs() {
    padding_matches_eager("dpt-vit", [3, 64, 64]);
    padding_matches_eager("dit", [3, 64, 64]);
    padding_matches_eager("depth-anything", [3, 56, 70]);
}

#[test]
fn a_padded_runner_reports_the_models_own_input_errors() {
    let mut padded = ModelRunner::new(
        fixture_model("dit"),
        "dit",
        Device::Cpu,
        Kind::Float,
        Execution::Padded {
            sizes: vec![4],
            graphs: false,
        },
    );
    let error = padded
        .forward(&Tensor::zeros([3, 3, 64, 72], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "BeitForImageClassification: input 64x72 not accepted: height and width must be positive multiples of the patch size 16"
    );
    let error = padded
        .forward(&Tensor::zeros([3, 1, 64, 64], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "BeitForImageClassification: input 64x64 not accepted: expected pixel_values [B, 3, H, W], got [3, 1, 64, 64]"
    );
}

#[test]
fn gpu_memory_is_read_where_cuda_is_and_refused_clearly_where_not() {
    match visiond::runtime::native::cuda_memory(0) {
        Ok((allocated, reserved)) => {
            assert!(tch::Cuda::is_available());
            assert!(reserved >= allocated, "{allocated} > {reserved}");
        }
        Err(reason) => {
            assert!(!tch::Cuda::is_available(), "{reason}");
            let reason = reason.to_string();
            assert!(reason.contains("no CUDA"), "{reason}");
        }
    }
}

#[test]
fn pinned_copies_keep_the_bytes_where_cuda_is_and_fail_as_errors_where_not() {
    let host = Tensor::from_slice(&[1u8, 2, 3, 250]);
    match native::pin_memory(&host) {
        Ok(pinned) => {
            assert!(tch::Cuda::is_available());
            assert_eq!(Vec::<u8>::try_from(&pinned).unwrap(), vec![1, 2, 3, 250]);
        }
        // Without a device to pin for libtorch refuses; the stager reports it per frame.
        Err(reason) => {
            assert!(!tch::Cuda::is_available(), "{reason}");
            assert!(!reason.to_string().is_empty());
            eprintln!("pin_memory without CUDA: {reason}");
        }
    }
}

#[test]
fn results_events_and_side_streams_work_where_cuda_is_and_fail_as_errors_where_not() {
    let cuda = tch::Cuda::is_available();
    // A CPU tensor needs no stream bookkeeping, with or without CUDA.
    native::record_stream(&Tensor::from_slice(&[1u8]), 0).unwrap();
    match native::CudaEvent::record(0) {
        Ok(event) => {
            assert!(cuda);
            event.synchronize().unwrap();
            event.block(0).unwrap();
        }
        Err(reason) => {
            assert!(!cuda, "{reason}");
            assert!(!reason.to_string().is_empty());
        }
    }
    match native::on_side_stream(0, || {
        // What an output thread does there: a copy back to the host.
        let on_device = Tensor::from_slice(&[5u8, 6, 7]).to_device(tch::Device::Cuda(0));
        Vec::<u8>::try_from(on_device.to_device(tch::Device::Cpu)).unwrap()
    }) {
        Ok(bytes) => {
            assert!(cuda);
            assert_eq!(bytes, vec![5, 6, 7]);
        }
        Err(reason) => assert!(!cuda, "{reason}"),
    }
}

#[test]
fn each_thread_keeps_one_side_stream_where_cuda_is() {
    if !tch::Cuda::is_available() {
        // Without a device no stream can be taken: typed errors, nothing run.
        assert!(native::on_side_stream(0, || unreachable!()).is_err());
        assert!(native::current_stream_id(0).is_err());
        return;
    }
    // Every call on one thread runs on the same stream, not the default one (a new pool stream
    // per call would cycle through the pool's 32); another thread gets its own.
    let on_side = || native::on_side_stream(0, || native::current_stream_id(0).unwrap()).unwrap();
    let ids = std::thread::spawn(move || {
        let default = native::current_stream_id(0).unwrap();
        let ids: Vec<i64> = (0..40).map(|_| on_side()).collect();
        // Restored after each call.
        assert_eq!(native::current_stream_id(0).unwrap(), default);
        assert!(ids.iter().all(|&id| id != default), "{ids:?}");
        ids
    })
    .join()
    .unwrap();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let other = std::thread::spawn(on_side).join().unwrap();
    assert_ne!(
        other, ids[0],
        "a second thread shares the first one's stream"
    );
}

/// Bytes that say when they are dropped.
struct Watched {
    bytes: Vec<u8>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_tensor_over_bytes_keeps_them_until_its_last_view_is_gone() {
    use std::sync::atomic::Ordering;
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bytes: Vec<u8> = (0..=255).collect();
    let data = bytes.as_ptr() as usize;
    let tensor = native::tensor_over_bytes(Watched {
        bytes,
        dropped: dropped.clone(),
    })
    .unwrap();
    // No copy: the tensor reads the bytes where they are.
    assert_eq!(tensor.data_ptr() as usize, data);
    assert_eq!((tensor.size(), tensor.kind()), (vec![256], Kind::Uint8));
    // A view and a shallow clone, moved to another thread and read there after the original
    // is gone.
    let view = tensor.narrow(0, 250, 6);
    let clone = tensor.shallow_clone();
    drop(tensor);
    let read = std::thread::spawn(move || {
        let values = Vec::<u8>::try_from(&view).unwrap();
        drop(view);
        values
    })
    .join()
    .unwrap();
    assert_eq!(read, vec![250, 251, 252, 253, 254, 255]);
    assert!(
        !dropped.load(Ordering::SeqCst),
        "dropped while a tensor held them"
    );
    assert_eq!(Vec::<u8>::try_from(&clone).unwrap()[..3], [0, 1, 2]);
    drop(clone);
    assert!(
        dropped.load(Ordering::SeqCst),
        "kept after the last tensor was gone"
    );
}

#[test]
fn every_function_of_the_shims_c_interface_is_noexcept() {
    // A C++ exception unwinding into Rust is undefined behaviour: each function the Rust side
    // calls must promise (and, through `guarded`, keep) that none escapes.
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/native/shim.cpp"),
    )
    .unwrap();
    // Definitions start a line with their return type and the visiond_ prefix; their
    // signature runs to the body's opening brace.
    let mut checked = Vec::new();
    for (at, _) in source.match_indices('\n') {
        let definition = &source[at + 1..];
        let starts = ["int visiond_", "void visiond_", "void* visiond_"];
        if !starts.iter().any(|s| definition.starts_with(s)) {
            continue;
        }
        let signature = &definition[..definition.find('{').unwrap()];
        let name = signature.split('(').next().unwrap();
        assert!(
            signature.trim_end().ends_with("noexcept"),
            "{name} is not noexcept"
        );
        checked.push(name.to_owned());
    }
    assert!(checked.len() >= 30, "only {checked:?}");
}
