//! libtorch features tch 0.24 does not bind, through the C++ shim next to this file that
//! `build.rs` compiles: CUDA graphs captured on a side stream, channels-last tensors, the
//! process-wide TF32 switches, a FLOP counter, and the profiler's Chrome traces.
//!
//! Tensors cross the boundary as tch passes them to its own C glue: a pointer to a C++
//! `at::Tensor`; a tensor the shim returns is a new one that a [`Tensor`] then owns.

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::Path;

use tch::Tensor;

unsafe extern "C" {
    fn visiond_cuda_graphs_compiled() -> c_int;
    fn visiond_set_tf32(allow: c_int, err: *mut c_char, len: usize) -> c_int;
    fn visiond_tf32_state() -> c_int;
    fn visiond_channels_last(
        input: *const c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_is_channels_last(input: *const c_void) -> c_int;
    fn visiond_pin_memory(
        input: *const c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_flops_start(err: *mut c_char, len: usize) -> c_int;
    fn visiond_flops_stop(flops: *mut f64, err: *mut c_char, len: usize) -> c_int;
    fn visiond_trace_start(cuda: c_int, err: *mut c_char, len: usize) -> c_int;
    fn visiond_trace_stop(path: *const c_char, err: *mut c_char, len: usize) -> c_int;
    fn visiond_cuda_graphs_available(device: c_int, why: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_context_new(device: c_int, err: *mut c_char, len: usize) -> *mut c_void;
    fn visiond_graph_context_free(context: *mut c_void);
    fn visiond_graph_context_enter(context: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_context_exit(context: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_capture_begin(
        context: *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    fn visiond_graph_capture_end(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_replay(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_free(graph: *mut c_void);
    fn visiond_event_record(device: c_int, err: *mut c_char, len: usize) -> *mut c_void;
    fn visiond_event_synchronize(event: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_event_free(event: *mut c_void);
    fn visiond_event_block(
        event: *mut c_void,
        device: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_record_stream(
        tensor: *const c_void,
        device: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_side_stream_enter(device: c_int, err: *mut c_char, len: usize) -> *mut c_void;
    fn visiond_side_stream_exit(previous: *mut c_void);
    fn visiond_kernels_compile(
        source: *const c_char,
        arch: c_int,
        image_bytes: *mut u64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_kernels_load(
        source: *const c_char,
        device: c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_yuv420_to_rgb(
        y: *const c_void,
        u: *const c_void,
        v: *const c_void,
        params: *const i32,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_rgb_to_yuv420(
        rgb: *const c_void,
        y: *const c_void,
        u: *const c_void,
        v: *const c_void,
        params: *const i32,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_cuda_memory(
        device: c_int,
        allocated: *mut u64,
        reserved: *mut u64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
}

/// A message buffer the shim writes its errors into.
struct ErrorText([u8; 1024]);

impl ErrorText {
    fn new() -> Self {
        Self([0; 1024])
    }

    fn ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr().cast()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn text(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

/// Runs a shim call that returns nonzero on failure, with its message as the error.
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut err = ErrorText::new();
    let len = err.len();
    if f(err.ptr(), len) == 0 {
        Ok(())
    } else {
        Err(err.text())
    }
}

/// Bytes libtorch's caching allocator holds on CUDA device `index`: (allocated to tensors,
/// reserved from the driver).
pub fn cuda_memory(index: usize) -> Result<(u64, u64), String> {
    let (mut allocated, mut reserved) = (0u64, 0u64);
    // SAFETY: the out-pointers are valid for the call; `err` is the callee's to fill.
    call(|err, len| unsafe {
        visiond_cuda_memory(index as c_int, &mut allocated, &mut reserved, err, len)
    })?;
    Ok((allocated, reserved))
}

/// Whether this build carries CUDA graph support (whatever the machine has).
pub fn cuda_graphs_compiled() -> bool {
    unsafe { visiond_cuda_graphs_compiled() != 0 }
}

/// `Ok` when graphs can be captured on CUDA device `index` here, else why not.
pub fn cuda_graphs_available(index: usize) -> Result<(), String> {
    let mut why = ErrorText::new();
    let len = why.len();
    let available = unsafe { visiond_cuda_graphs_available(index as c_int, why.ptr(), len) != 0 };
    if available { Ok(()) } else { Err(why.text()) }
}

/// Sets libtorch's process-wide TF32 switches for f32 matrix products and convolutions on
/// CUDA (PyTorch's `allow_tf32` for cuBLAS and cuDNN).
pub fn set_tf32(allow: bool) -> Result<(), String> {
    call(|err, len| unsafe { visiond_set_tf32(c_int::from(allow), err, len) })
}

/// Both TF32 switches on (`Some(true)`), both off (`Some(false)`), or mixed (`None`).
pub fn tf32_allowed() -> Option<bool> {
    match unsafe { visiond_tf32_state() } {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// The same values in channels-last (NHWC) memory order; the shape stays [N, C, H, W].
pub fn to_channels_last(tensor: &Tensor) -> Result<Tensor, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    call(|err, len| unsafe { visiond_channels_last(tensor.as_ptr().cast(), &mut out, err, len) })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// A copy of a CPU tensor in page-locked memory, which the device copies from without blocking
/// the host. Fails where libtorch has no CUDA device to pin memory for.
pub fn pin_memory(tensor: &Tensor) -> Result<Tensor, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    call(|err, len| unsafe { visiond_pin_memory(tensor.as_ptr().cast(), &mut out, err, len) })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

pub fn is_channels_last(tensor: &Tensor) -> bool {
    unsafe { visiond_is_channels_last(tensor.as_ptr().cast()) != 0 }
}

/// Counts the floating-point operations of the matrix products, convolutions and attention
/// the calling thread runs from [`FlopCounter::start`] to [`FlopCounter::stop`] (2 per
/// multiply-add, the number FLOP counters report).
pub struct FlopCounter {
    stopped: bool,
}

impl FlopCounter {
    pub fn start() -> Result<Self, String> {
        call(|err, len| unsafe { visiond_flops_start(err, len) })?;
        Ok(Self { stopped: false })
    }

    pub fn stop(mut self) -> Result<f64, String> {
        self.stopped = true;
        let mut flops = 0.0;
        call(|err, len| unsafe { visiond_flops_stop(&mut flops, err, len) })?;
        Ok(flops)
    }
}

impl Drop for FlopCounter {
    fn drop(&mut self) {
        if !self.stopped {
            let mut flops = 0.0;
            let _ = call(|err, len| unsafe { visiond_flops_stop(&mut flops, err, len) });
        }
    }
}

/// The Kineto profiler on the calling thread (operators, and with `cuda` the GPU's kernels),
/// written as a Chrome trace when stopped.
pub struct Trace {
    stopped: bool,
}

impl Trace {
    pub fn start(cuda: bool) -> Result<Self, String> {
        call(|err, len| unsafe { visiond_trace_start(c_int::from(cuda), err, len) })?;
        Ok(Self { stopped: false })
    }

    pub fn stop(mut self, path: &Path) -> Result<(), String> {
        self.stopped = true;
        let path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        call(|err, len| unsafe { visiond_trace_stop(path.as_ptr(), err, len) })
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = call(|err, len| unsafe { visiond_trace_stop(std::ptr::null(), err, len) });
        }
    }
}

/// One model's CUDA graphs: a side stream to capture on and a memory pool they share.
pub struct GraphContext {
    raw: *mut c_void,
    entered: bool,
}

// SAFETY: the context is a plain C++ object with no thread affinity; the side stream is made
// current only between `enter` and `exit` on one thread, which `&mut self` guarantees.
unsafe impl Send for GraphContext {}

impl GraphContext {
    pub fn new(device: usize) -> Result<Self, String> {
        cuda_graphs_available(device)?;
        let mut err = ErrorText::new();
        let len = err.len();
        let raw = unsafe { visiond_graph_context_new(device as c_int, err.ptr(), len) };
        if raw.is_null() {
            Err(err.text())
        } else {
            Ok(Self {
                raw,
                entered: false,
            })
        }
    }

    /// Runs `work` with the side stream current on this thread (after the work already queued
    /// on the caller's stream), then orders the caller's stream after it.
    pub fn on_side_stream<T>(&mut self, work: impl FnOnce(&mut Self) -> T) -> Result<T, String> {
        call(|err, len| unsafe { visiond_graph_context_enter(self.raw, err, len) })?;
        self.entered = true;
        let result = work(self);
        self.entered = false;
        call(|err, len| unsafe { visiond_graph_context_exit(self.raw, err, len) })?;
        Ok(result)
    }

    /// Captures what `work` queues (on the side stream: call inside [`Self::on_side_stream`])
    /// into a graph. A failure of `work` or of the capture ends the capture and is returned.
    pub fn capture<T, E: ToString>(
        &mut self,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<(CudaGraph, T), String> {
        if !self.entered {
            return Err("a capture must run on the side stream".to_owned());
        }
        let mut err = ErrorText::new();
        let len = err.len();
        let raw = unsafe { visiond_graph_capture_begin(self.raw, err.ptr(), len) };
        if raw.is_null() {
            return Err(err.text());
        }
        let graph = CudaGraph { raw };
        let result = work();
        // Always end the capture, so the stream leaves capture mode even after a failure.
        let ended = call(|err, len| unsafe { visiond_graph_capture_end(graph.raw, err, len) });
        let value = result.map_err(|e| e.to_string())?;
        ended?;
        Ok((graph, value))
    }
}

impl Drop for GraphContext {
    fn drop(&mut self) {
        unsafe { visiond_graph_context_free(self.raw) }
    }
}

/// A captured graph, replayed on the caller's current stream.
pub struct CudaGraph {
    raw: *mut c_void,
}

// SAFETY: as for GraphContext: replayed by one thread at a time (`&mut self`).
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    pub fn replay(&mut self) -> Result<(), String> {
        call(|err, len| unsafe { visiond_graph_replay(self.raw, err, len) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        unsafe { visiond_graph_free(self.raw) }
    }
}

/// The fused colour conversions' source (see the file): compiled into the shim for the CPU, and
/// by NVRTC at run time for CUDA.
const KERNELS_SOURCE: &str = include_str!("kernels.cuh");

/// How chroma becomes full resolution in [`fused_yuv420_to_rgb`], and the colour's matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YuvToRgbParams {
    /// GStreamer's 2-tap filters (its generic path, NV12) rather than the nearest sample (I420).
    pub filtered: bool,
    pub h_cosited: bool,
    pub v_cosited: bool,
    /// `processing::colour`'s integer coefficients.
    pub coefficients: [i32; 5],
}

/// Compiles the fused conversions for compute capability `arch` (e.g. 90) with NVRTC, without
/// loading them (no GPU needed): the size of the image made.
pub fn compile_kernels(arch: u32) -> Result<u64, String> {
    let source = CString::new(KERNELS_SOURCE).map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    call(|err, len| unsafe {
        visiond_kernels_compile(source.as_ptr(), arch as c_int, &mut bytes, err, len)
    })?;
    Ok(bytes)
}

/// Compiles and loads the fused conversions on CUDA device `index` (once per process).
pub fn load_kernels(index: usize) -> Result<(), String> {
    let source = CString::new(KERNELS_SOURCE).map_err(|e| e.to_string())?;
    call(|err, len| unsafe { visiond_kernels_load(source.as_ptr(), index as c_int, err, len) })
}

/// 4:2:0 planes (uint8 views with any strides, on one device) to uint8 RGB [H, W, 3] in one
/// pass: on CUDA one kernel ([`load_kernels`] first), on the CPU the same code in a loop.
pub fn fused_yuv420_to_rgb(
    y: &Tensor,
    u: &Tensor,
    v: &Tensor,
    params: &YuvToRgbParams,
) -> Result<Tensor, String> {
    let mut flat = [0i32; 8];
    flat[0] = i32::from(params.filtered);
    flat[1] = i32::from(params.h_cosited);
    flat[2] = i32::from(params.v_cosited);
    flat[3..].copy_from_slice(&params.coefficients);
    let mut out: *mut c_void = std::ptr::null_mut();
    call(|err, len| unsafe {
        visiond_yuv420_to_rgb(
            y.as_ptr().cast(),
            u.as_ptr().cast(),
            v.as_ptr().cast(),
            flat.as_ptr(),
            &mut out,
            err,
            len,
        )
    })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// uint8 RGB [H, W, 3] into the given Y, U and V plane views (I420 planes, or NV12's
/// interleaved plane as two views one byte apart) in one pass, on their device.
pub fn fused_rgb_to_yuv420(
    rgb: &Tensor,
    planes: [&Tensor; 3],
    h_cosited: bool,
    v_cosited: bool,
    coefficients: &[[i64; 4]; 3],
) -> Result<(), String> {
    let mut flat = [0i32; 14];
    flat[0] = i32::from(h_cosited);
    flat[1] = i32::from(v_cosited);
    for (i, value) in coefficients.iter().flatten().enumerate() {
        flat[2 + i] = i32::try_from(*value).map_err(|e| e.to_string())?;
    }
    let [y, u, v] = planes;
    call(|err, len| unsafe {
        visiond_rgb_to_yuv420(
            rgb.as_ptr().cast(),
            y.as_ptr().cast(),
            u.as_ptr().cast(),
            v.as_ptr().cast(),
            flat.as_ptr(),
            err,
            len,
        )
    })
}

/// A point in a CUDA device's current stream: everything queued there before it was recorded.
pub struct CudaEvent {
    raw: *mut c_void,
}

// SAFETY: a c10::Event is a plain handle (recorded once, then only waited on); CUDA events may
// be waited on from any thread.
unsafe impl Send for CudaEvent {}
unsafe impl Sync for CudaEvent {}

impl CudaEvent {
    /// Records an event on CUDA device `index`'s current stream (this thread's).
    pub fn record(index: usize) -> Result<Self, String> {
        let mut err = ErrorText::new();
        let len = err.len();
        let raw = unsafe { visiond_event_record(index as c_int, err.ptr(), len) };
        if raw.is_null() {
            Err(err.text())
        } else {
            Ok(Self { raw })
        }
    }

    /// Blocks until the work queued before the record is done.
    pub fn synchronize(&self) -> Result<(), String> {
        call(|err, len| unsafe { visiond_event_synchronize(self.raw, err, len) })
    }

    /// Makes CUDA device `index`'s current stream wait (on the device) for this event: the
    /// work queued there from now on starts after the work before the record.
    pub fn block(&self, index: usize) -> Result<(), String> {
        call(|err, len| unsafe { visiond_event_block(self.raw, index as c_int, err, len) })
    }
}

/// Marks `tensor` (made on another stream) as used by CUDA device `index`'s current stream, so
/// that its memory is not reused before that stream's work up to the tensor's release is done.
pub fn record_stream(tensor: &Tensor, index: usize) -> Result<(), String> {
    call(|err, len| unsafe {
        visiond_record_stream(tensor.as_ptr().cast(), index as c_int, err, len)
    })
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        unsafe { visiond_event_free(self.raw) }
    }
}

/// Whether the frame path uses side streams on CUDA (staging in the source threads, copies
/// back in the output threads); `VISIOND_SIDE_STREAMS=off` queues everything on the default
/// stream as before, to compare the two.
pub fn side_streams_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        let off = std::env::var("VISIOND_SIDE_STREAMS").is_ok_and(|v| v == "off" || v == "0");
        if off {
            tracing::info!("VISIOND_SIDE_STREAMS=off: the frame path on the default stream only");
        }
        !off
    })
}

/// Runs `work` with a side stream (libtorch's pool, non-blocking) current on this thread for
/// CUDA device `index`, then restores the thread's stream: `work`'s copies and kernels do not
/// queue behind what other threads launched on the default stream.
pub fn on_side_stream<T>(index: usize, work: impl FnOnce() -> T) -> Result<T, String> {
    let mut err = ErrorText::new();
    let len = err.len();
    let previous = unsafe { visiond_side_stream_enter(index as c_int, err.ptr(), len) };
    if previous.is_null() {
        return Err(err.text());
    }
    struct Restore(*mut c_void);
    impl Drop for Restore {
        fn drop(&mut self) {
            unsafe { visiond_side_stream_exit(self.0) }
        }
    }
    // Restored even if `work` unwinds.
    let _restore = Restore(previous);
    Ok(work())
}
