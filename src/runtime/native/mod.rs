//! libtorch features tch 0.24 does not bind, through the C++ shim next to this file that
//! `build.rs` compiles: CUDA graphs captured on a side stream, the frame path's side streams
//! and events, tensors over memory Rust owns, channels-last tensors, the process-wide TF32
//! switches, a FLOP counter, the profiler's Chrome traces and the fused colour conversions.
//!
//! Tensors cross the boundary as tch passes them to its own C glue: a pointer to a C++
//! `at::Tensor`; a tensor the shim returns is a new one that a [`Tensor`] then owns. Every
//! fallible shim function returns a status (0, or [`NativeError`]'s kinds) and never lets a
//! C++ exception through (they are `noexcept` and catch everything).

use std::ffi::{CString, c_char, c_int, c_void};
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use tch::{Device, Tensor};

unsafe extern "C" {
    fn visiond_shim_has_cuda() -> c_int;
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
    fn visiond_tensor_over_bytes(
        data: *const u8,
        length: i64,
        release: extern "C" fn(*mut c_void),
        owner: *mut c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_flops_start(err: *mut c_char, len: usize) -> c_int;
    fn visiond_flops_stop(flops: *mut f64, err: *mut c_char, len: usize) -> c_int;
    fn visiond_trace_start(cuda: c_int, err: *mut c_char, len: usize) -> c_int;
    fn visiond_trace_stop(path: *const c_char, err: *mut c_char, len: usize) -> c_int;
    fn visiond_cuda_graphs_available(device: c_int, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_context_new(
        device: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_graph_context_free(context: *mut c_void);
    fn visiond_graph_context_enter(context: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_context_exit(context: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_capture_begin(
        context: *mut c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_graph_capture_end(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_replay(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_graph_free(graph: *mut c_void);
    fn visiond_event_record(
        device: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
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
    fn visiond_side_stream_enter(
        device: c_int,
        previous: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn visiond_side_stream_exit(previous: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn visiond_current_stream(device: c_int, id: *mut i64, err: *mut c_char, len: usize) -> c_int;
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

/// What went wrong at the boundary with the C++ shim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeError {
    /// libtorch, CUDA or NVRTC refused, in their words (a C++ exception's first line).
    #[error("{0}")]
    Failed(String),
    /// The call needs CUDA and this build's shim was compiled without it.
    #[error(
        "this build has no CUDA support in its shim (no CUDA runtime headers when it was built)"
    )]
    NoCudaInShim,
    /// A string for the shim holds a NUL byte (C cannot take it).
    #[error("{what} holds a NUL byte")]
    NulByte { what: String },
    /// A number that does not fit the shim's parameter.
    #[error("{what} {value} is out of range for the shim")]
    OutOfRange { what: &'static str, value: i128 },
    /// A graph capture asked for off its context's side stream.
    #[error("a capture must run on the side stream")]
    NotOnSideStream,
    /// The work captured into a graph failed (its own error).
    #[error("{0}")]
    CaptureWork(String),
}

/// The shim's statuses (shim.cpp's kOk, kFailed, kNoCuda).
const OK: c_int = 0;
const NO_CUDA: c_int = 2;

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

/// Runs a shim call that returns a status, with its message in the error.
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), NativeError> {
    let mut err = ErrorText::new();
    let len = err.len();
    match f(err.ptr(), len) {
        OK => Ok(()),
        NO_CUDA => Err(NativeError::NoCudaInShim),
        _ => Err(NativeError::Failed(err.text())),
    }
}

/// Runs a shim call that makes an object (a heap C++ value the caller then owns).
fn make(
    f: impl FnOnce(*mut *mut c_void, *mut c_char, usize) -> c_int,
) -> Result<*mut c_void, NativeError> {
    let mut out: *mut c_void = std::ptr::null_mut();
    call(|err, len| f(&mut out, err, len))?;
    if out.is_null() {
        return Err(NativeError::Failed("the shim made nothing".to_owned()));
    }
    Ok(out)
}

/// A tensor the shim made.
///
/// # Safety
/// `raw` must be a heap `at::Tensor` that the shim made for the caller and nothing else owns.
unsafe fn owned_tensor(raw: *mut c_void) -> Tensor {
    // SAFETY: the caller's contract: a new heap tensor, owned by the returned Tensor from now.
    unsafe { Tensor::from_ptr(raw.cast()) }
}

/// A device index as the shim takes it: an int that libtorch narrows to its 8-bit
/// `DeviceIndex`, so anything larger would silently name another device.
fn device_index(index: usize) -> Result<c_int, NativeError> {
    i8::try_from(index)
        .map(c_int::from)
        .map_err(|_| NativeError::OutOfRange {
            what: "CUDA device index",
            value: index as i128,
        })
}

/// Whether this build's shim has its CUDA part (graphs, events, side streams, the fused
/// kernels), whatever the machine has. Without it those calls fail with
/// [`NativeError::NoCudaInShim`] and the frame path keeps to what libtorch alone does.
pub fn shim_has_cuda() -> bool {
    // SAFETY: a constant query without arguments.
    unsafe { visiond_shim_has_cuda() != 0 }
}

/// Bytes libtorch's caching allocator holds on CUDA device `index`: (allocated to tensors,
/// reserved from the driver).
pub fn cuda_memory(index: usize) -> Result<(u64, u64), NativeError> {
    let device = device_index(index)?;
    let (mut allocated, mut reserved) = (0u64, 0u64);
    // SAFETY: the out-pointers are valid for the call; `err` is the callee's to fill.
    call(|err, len| unsafe {
        visiond_cuda_memory(device, &mut allocated, &mut reserved, err, len)
    })?;
    Ok((allocated, reserved))
}

/// `Ok` when graphs can be captured on CUDA device `index` here, else why not.
pub fn cuda_graphs_available(index: usize) -> Result<(), NativeError> {
    let device = device_index(index)?;
    // SAFETY: `err` is a buffer of `len` bytes for the callee's message.
    call(|err, len| unsafe { visiond_cuda_graphs_available(device, err, len) })
}

/// Sets libtorch's process-wide TF32 switches for f32 matrix products and convolutions on
/// CUDA (PyTorch's `allow_tf32` for cuBLAS and cuDNN).
pub fn set_tf32(allow: bool) -> Result<(), NativeError> {
    // SAFETY: plain values and the callee's message buffer.
    call(|err, len| unsafe { visiond_set_tf32(c_int::from(allow), err, len) })
}

/// Both TF32 switches on (`Some(true)`), both off (`Some(false)`), or mixed or unreadable
/// (`None`).
pub fn tf32_allowed() -> Option<bool> {
    // SAFETY: a query without arguments.
    match unsafe { visiond_tf32_state() } {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// The same values in channels-last (NHWC) memory order; the shape stays [N, C, H, W].
pub fn to_channels_last(tensor: &Tensor) -> Result<Tensor, NativeError> {
    // SAFETY: `tensor` is a live tensor for the call; the shim only reads it.
    let out = make(|out, err, len| unsafe {
        visiond_channels_last(tensor.as_ptr().cast(), out, err, len)
    })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { owned_tensor(out) })
}

/// A copy of a CPU tensor in page-locked memory, which the device copies from without blocking
/// the host. Fails where libtorch has no CUDA device to pin memory for.
pub fn pin_memory(tensor: &Tensor) -> Result<Tensor, NativeError> {
    // SAFETY: `tensor` is a live tensor for the call; the shim only reads it.
    let out =
        make(|out, err, len| unsafe { visiond_pin_memory(tensor.as_ptr().cast(), out, err, len) })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { owned_tensor(out) })
}

pub fn is_channels_last(tensor: &Tensor) -> bool {
    // SAFETY: `tensor` is a live tensor for the call; the shim only reads it.
    unsafe { visiond_is_channels_last(tensor.as_ptr().cast()) != 0 }
}

/// Drops the owner [`tensor_over_bytes`] boxed, when the tensor storage that held it is freed.
/// A panic here would abort (an `extern "C"` function does not unwind): nothing unwinds into
/// C++.
extern "C" fn release_bytes<B>(owner: *mut c_void) {
    // SAFETY: `owner` is the `Box<B>` that `tensor_over_bytes` leaked, and the shim hands it
    // back exactly once (its BytesOwner is never copied).
    drop(unsafe { Box::from_raw(owner.cast::<B>()) });
}

/// A 1-D uint8 CPU tensor over `bytes`' memory, without a copy. The tensor's storage owns
/// `bytes`: every tensor made from it (views, shallow clones) keeps them alive, and they are
/// dropped, on whichever thread, when the last one goes. As with `gst::Buffer::from_slice`,
/// `bytes.as_ref()` is read once and must stay the same memory, unchanged, while `bytes` lives
/// (a mapped GStreamer buffer, a `Vec`); nothing writes through the tensor.
pub fn tensor_over_bytes<B: AsRef<[u8]> + Send + 'static>(bytes: B) -> Result<Tensor, NativeError> {
    let owner = Box::new(bytes);
    let slice = (*owner).as_ref();
    let (data, length) = (slice.as_ptr(), slice.len());
    let length = i64::try_from(length).map_err(|_| NativeError::OutOfRange {
        what: "a buffer of bytes",
        value: length as i128,
    })?;
    let owner = Box::into_raw(owner).cast::<c_void>();
    // SAFETY: `data` points to `length` bytes that `owner` keeps valid and unchanged until the
    // shim calls `release_bytes::<B>(owner)`, which it does exactly once: when the storage is
    // freed, or before returning if no tensor was made. From here the shim owns `owner`.
    let out = make(|out, err, len| unsafe {
        visiond_tensor_over_bytes(data, length, release_bytes::<B>, owner, out, err, len)
    })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { owned_tensor(out) })
}

/// Counts the floating-point operations of the matrix products, convolutions and attention
/// the calling thread runs from [`FlopCounter::start`] to [`FlopCounter::stop`] (2 per
/// multiply-add, the number FLOP counters report).
pub struct FlopCounter {
    stopped: bool,
}

impl FlopCounter {
    pub fn start() -> Result<Self, NativeError> {
        // SAFETY: only the callee's message buffer.
        call(|err, len| unsafe { visiond_flops_start(err, len) })?;
        Ok(Self { stopped: false })
    }

    pub fn stop(mut self) -> Result<f64, NativeError> {
        self.stopped = true;
        let mut flops = 0.0;
        // SAFETY: `flops` is valid for the call; `err` is the callee's to fill.
        call(|err, len| unsafe { visiond_flops_stop(&mut flops, err, len) })?;
        Ok(flops)
    }
}

impl Drop for FlopCounter {
    fn drop(&mut self) {
        if !self.stopped {
            let mut flops = 0.0;
            // SAFETY: as in `stop`.
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
    pub fn start(cuda: bool) -> Result<Self, NativeError> {
        // SAFETY: a plain value and the callee's message buffer.
        call(|err, len| unsafe { visiond_trace_start(c_int::from(cuda), err, len) })?;
        Ok(Self { stopped: false })
    }

    pub fn stop(mut self, path: &Path) -> Result<(), NativeError> {
        self.stopped = true;
        let path =
            CString::new(path.to_string_lossy().as_bytes()).map_err(|_| NativeError::NulByte {
                what: format!("the trace path {}", path.display()),
            })?;
        // SAFETY: `path` is a NUL-terminated string that lives through the call.
        call(|err, len| unsafe { visiond_trace_stop(path.as_ptr(), err, len) })
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if !self.stopped {
            // SAFETY: a null path is the shim's "discard the trace".
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
    pub fn new(device: usize) -> Result<Self, NativeError> {
        cuda_graphs_available(device)?;
        let device = device_index(device)?;
        // SAFETY: the out-pointer and message buffer are valid for the call.
        let raw =
            make(|out, err, len| unsafe { visiond_graph_context_new(device, out, err, len) })?;
        Ok(Self {
            raw,
            entered: false,
        })
    }

    /// Runs `work` with the side stream current on this thread (after the work already queued
    /// on the caller's stream), then orders the caller's stream after it.
    pub fn on_side_stream<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> T,
    ) -> Result<T, NativeError> {
        // SAFETY: `raw` is this context's live object; `&mut self` keeps other threads out.
        call(|err, len| unsafe { visiond_graph_context_enter(self.raw, err, len) })?;
        self.entered = true;
        let result = work(self);
        self.entered = false;
        // SAFETY: as above.
        call(|err, len| unsafe { visiond_graph_context_exit(self.raw, err, len) })?;
        Ok(result)
    }

    /// Captures what `work` queues (on the side stream: call inside [`Self::on_side_stream`])
    /// into a graph. A failure of `work` or of the capture ends the capture and is returned.
    pub fn capture<T, E: ToString>(
        &mut self,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<(CudaGraph, T), NativeError> {
        if !self.entered {
            return Err(NativeError::NotOnSideStream);
        }
        // SAFETY: `raw` is this context's live object; the out-pointer is valid for the call.
        let raw =
            make(|out, err, len| unsafe { visiond_graph_capture_begin(self.raw, out, err, len) })?;
        let graph = CudaGraph { raw };
        let result = work();
        // Always end the capture, so the stream leaves capture mode even after a failure.
        // SAFETY: `graph.raw` is the graph just begun, alive until `graph` drops.
        let ended = call(|err, len| unsafe { visiond_graph_capture_end(graph.raw, err, len) });
        let value = result.map_err(|e| NativeError::CaptureWork(e.to_string()))?;
        ended?;
        Ok((graph, value))
    }
}

impl Drop for GraphContext {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by visiond_graph_context_new and is freed only here.
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
    pub fn replay(&mut self) -> Result<(), NativeError> {
        // SAFETY: `raw` is this graph's live object; `&mut self` keeps other threads out.
        call(|err, len| unsafe { visiond_graph_replay(self.raw, err, len) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by visiond_graph_capture_begin and is freed only here.
        unsafe { visiond_graph_free(self.raw) }
    }
}

/// The fused colour conversions' source (see the file): compiled into the shim for the CPU,
/// and by NVRTC at run time for CUDA.
const KERNELS_SOURCE: &str = include_str!("kernels.cuh");

fn kernels_source() -> Result<CString, NativeError> {
    CString::new(KERNELS_SOURCE).map_err(|_| NativeError::NulByte {
        what: "the fused conversions' source".to_owned(),
    })
}

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
pub fn compile_kernels(arch: u32) -> Result<u64, NativeError> {
    let source = kernels_source()?;
    let arch = c_int::try_from(arch).map_err(|_| NativeError::OutOfRange {
        what: "compute capability",
        value: i128::from(arch),
    })?;
    let mut bytes = 0u64;
    // SAFETY: `source` is NUL-terminated and lives through the call; `bytes` is valid.
    call(|err, len| unsafe {
        visiond_kernels_compile(source.as_ptr(), arch, &mut bytes, err, len)
    })?;
    Ok(bytes)
}

/// Compiles and loads the fused conversions on CUDA device `index` (once per process).
pub fn load_kernels(index: usize) -> Result<(), NativeError> {
    let source = kernels_source()?;
    let device = device_index(index)?;
    // SAFETY: `source` is NUL-terminated and lives through the call.
    call(|err, len| unsafe { visiond_kernels_load(source.as_ptr(), device, err, len) })
}

/// 4:2:0 planes (uint8 views with any strides, on one device) to uint8 RGB [H, W, 3] in one
/// pass: on CUDA one kernel ([`load_kernels`] first), on the CPU the same code in a loop.
pub fn fused_yuv420_to_rgb(
    y: &Tensor,
    u: &Tensor,
    v: &Tensor,
    params: &YuvToRgbParams,
) -> Result<Tensor, NativeError> {
    let mut flat = [0i32; 8];
    flat[0] = i32::from(params.filtered);
    flat[1] = i32::from(params.h_cosited);
    flat[2] = i32::from(params.v_cosited);
    flat[3..].copy_from_slice(&params.coefficients);
    // SAFETY: live tensors and a parameter array of the 8 values the shim reads, all
    // outliving the call; the shim checks the planes' shapes, kinds and devices.
    let out = make(|out, err, len| unsafe {
        visiond_yuv420_to_rgb(
            y.as_ptr().cast(),
            u.as_ptr().cast(),
            v.as_ptr().cast(),
            flat.as_ptr(),
            out,
            err,
            len,
        )
    })?;
    // SAFETY: on success the shim returned a new heap tensor that nothing else owns.
    Ok(unsafe { owned_tensor(out) })
}

/// uint8 RGB [H, W, 3] into the given Y, U and V plane views (I420 planes, or NV12's
/// interleaved plane as two views one byte apart) in one pass, on their device.
pub fn fused_rgb_to_yuv420(
    rgb: &Tensor,
    planes: [&Tensor; 3],
    h_cosited: bool,
    v_cosited: bool,
    coefficients: &[[i64; 4]; 3],
) -> Result<(), NativeError> {
    let mut flat = [0i32; 14];
    flat[0] = i32::from(h_cosited);
    flat[1] = i32::from(v_cosited);
    for (i, value) in coefficients.iter().flatten().enumerate() {
        flat[2 + i] = i32::try_from(*value).map_err(|_| NativeError::OutOfRange {
            what: "colour coefficient",
            value: i128::from(*value),
        })?;
    }
    let [y, u, v] = planes;
    // SAFETY: live tensors and a parameter array of the 14 values the shim reads, all
    // outliving the call; the shim checks the planes' shapes, kinds and devices before it
    // writes into them.
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
// SAFETY: as above: after the record, every method only waits on the event.
unsafe impl Sync for CudaEvent {}

impl CudaEvent {
    /// Records an event on CUDA device `index`'s current stream (this thread's).
    pub fn record(index: usize) -> Result<Self, NativeError> {
        let device = device_index(index)?;
        // SAFETY: the out-pointer and message buffer are valid for the call.
        let raw = make(|out, err, len| unsafe { visiond_event_record(device, out, err, len) })?;
        Ok(Self { raw })
    }

    /// Blocks until the work queued before the record is done.
    pub fn synchronize(&self) -> Result<(), NativeError> {
        // SAFETY: `raw` is this event's live object.
        call(|err, len| unsafe { visiond_event_synchronize(self.raw, err, len) })
    }

    /// Makes CUDA device `index`'s current stream wait (on the device) for this event: the
    /// work queued there from now on starts after the work before the record.
    pub fn block(&self, index: usize) -> Result<(), NativeError> {
        let device = device_index(index)?;
        // SAFETY: `raw` is this event's live object.
        call(|err, len| unsafe { visiond_event_block(self.raw, device, err, len) })
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by visiond_event_record and is freed only here.
        unsafe { visiond_event_free(self.raw) }
    }
}

/// Marks `tensor` (made on another stream) as used by CUDA device `index`'s current stream, so
/// that its memory is not reused before that stream's work up to the tensor's release is done.
/// A CPU tensor needs nothing.
pub fn record_stream(tensor: &Tensor, index: usize) -> Result<(), NativeError> {
    let device = device_index(index)?;
    // SAFETY: `tensor` is a live tensor for the call.
    call(|err, len| unsafe { visiond_record_stream(tensor.as_ptr().cast(), device, err, len) })
}

/// Whether a model's frame path queues its work on side streams: staging in the source
/// threads, copies back in the output threads, each on a stream of its own thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideStreams {
    On,
    /// The model is not on CUDA: there are no streams.
    NotCuda,
    /// The shim was built without CUDA: its streams and events would fail every frame, so
    /// everything stays on the default stream.
    NoCudaInShim,
    /// `VISIOND_SIDE_STREAMS=off`: everything on the default stream, to compare the two.
    SwitchedOff,
}

impl SideStreams {
    /// The decision, from what it depends on: whether the shim has CUDA, the model's device,
    /// and whether `VISIOND_SIDE_STREAMS` switched them off.
    pub fn decide(shim_has_cuda: bool, device: Device, switched_off: bool) -> Self {
        match (device, shim_has_cuda, switched_off) {
            (Device::Cuda(_), true, false) => Self::On,
            (Device::Cuda(_), false, _) => Self::NoCudaInShim,
            (Device::Cuda(_), true, true) => Self::SwitchedOff,
            _ => Self::NotCuda,
        }
    }

    /// The decision for a model on `device` in this process.
    pub fn for_device(device: Device) -> Self {
        Self::decide(shim_has_cuda(), device, side_streams_switched_off())
    }

    pub fn on(self) -> bool {
        self == Self::On
    }
}

impl fmt::Display for SideStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "side streams on (one per staging and output thread)",
            Self::NotCuda => "side streams n/a (CUDA only)",
            Self::NoCudaInShim => {
                "side streams off (this build's shim has no CUDA support): the default stream"
            }
            Self::SwitchedOff => "side streams off (VISIOND_SIDE_STREAMS=off): the default stream",
        })
    }
}

/// Whether a `VISIOND_SIDE_STREAMS` value switches side streams off (`off` or `0`).
fn switched_off(value: Option<&str>) -> bool {
    value.is_some_and(|v| v == "off" || v == "0")
}

fn side_streams_switched_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| switched_off(std::env::var("VISIOND_SIDE_STREAMS").ok().as_deref()))
}

/// Runs `work` with this thread's side stream for CUDA device `index` current, then restores
/// the thread's stream: `work`'s copies and kernels do not queue behind what other threads
/// launched on the default stream. The side stream is taken from libtorch's (high-priority,
/// non-blocking) pool on the thread's first call and is the same for all its later ones, so
/// the caching allocator keeps the thread's freed memory for one stream, not for each of the
/// pool's 32. Only where [`SideStreams::for_device`] says `On`.
pub fn on_side_stream<T>(index: usize, work: impl FnOnce() -> T) -> Result<T, NativeError> {
    let device = device_index(index)?;
    // SAFETY: the out-pointer and message buffer are valid for the call.
    let previous =
        make(|out, err, len| unsafe { visiond_side_stream_enter(device, out, err, len) })?;
    struct Restore(*mut c_void);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: the record visiond_side_stream_enter made; exit frees it, exactly once.
            let restored = call(|err, len| unsafe { visiond_side_stream_exit(self.0, err, len) });
            if let Err(e) = restored {
                tracing::warn!("could not restore this thread's CUDA stream: {e}");
            }
        }
    }
    // Restored even if `work` unwinds.
    let _restore = Restore(previous);
    Ok(work())
}

/// The id of CUDA device `index`'s current stream on this thread (to tell streams apart).
pub fn current_stream_id(index: usize) -> Result<i64, NativeError> {
    let device = device_index(index)?;
    let mut id = 0i64;
    // SAFETY: `id` is valid for the call.
    call(|err, len| unsafe { visiond_current_stream(device, &mut id, err, len) })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_streams_only_where_the_shim_has_cuda_the_model_is_on_cuda_and_not_switched_off() {
        let cuda = Device::Cuda(0);
        assert_eq!(SideStreams::decide(true, cuda, false), SideStreams::On);
        // The defect this guards against: a shim without CUDA failed every CUDA frame.
        assert_eq!(
            SideStreams::decide(false, cuda, false),
            SideStreams::NoCudaInShim
        );
        assert_eq!(
            SideStreams::decide(false, cuda, true),
            SideStreams::NoCudaInShim
        );
        assert_eq!(
            SideStreams::decide(true, cuda, true),
            SideStreams::SwitchedOff
        );
        for shim in [true, false] {
            for off in [true, false] {
                assert_eq!(
                    SideStreams::decide(shim, Device::Cpu, off),
                    SideStreams::NotCuda
                );
            }
        }
        assert!(SideStreams::On.on());
        assert!(!SideStreams::NoCudaInShim.on());
        assert_eq!(
            SideStreams::NoCudaInShim.to_string(),
            "side streams off (this build's shim has no CUDA support): the default stream"
        );
        assert_eq!(SideStreams::for_device(Device::Cpu), SideStreams::NotCuda);
        assert_eq!(
            SideStreams::for_device(cuda),
            if shim_has_cuda() {
                SideStreams::On
            } else {
                SideStreams::NoCudaInShim
            }
        );
    }

    #[test]
    fn only_off_or_zero_switches_side_streams_off() {
        assert!(switched_off(Some("off")));
        assert!(switched_off(Some("0")));
        assert!(!switched_off(Some("on")));
        assert!(!switched_off(Some("")));
        assert!(!switched_off(None));
    }

    #[test]
    fn a_cuda_call_without_a_gpu_is_a_typed_error() {
        // libtorch's device index is 8 bits: cuda:256 must not become cuda:0.
        assert_eq!(
            cuda_graphs_available(256),
            Err(NativeError::OutOfRange {
                what: "CUDA device index",
                value: 256
            })
        );
        assert_eq!(
            CudaEvent::record(usize::MAX).err().unwrap().to_string(),
            format!(
                "CUDA device index {} is out of range for the shim",
                usize::MAX
            )
        );
        if tch::Cuda::is_available() {
            return;
        }
        let expected_kind = |e: &NativeError| {
            if shim_has_cuda() {
                matches!(e, NativeError::Failed(_))
            } else {
                *e == NativeError::NoCudaInShim
            }
        };
        let e = CudaEvent::record(0).err().unwrap();
        assert!(expected_kind(&e), "{e:?}");
        let e = on_side_stream(0, || ()).unwrap_err();
        assert!(expected_kind(&e), "{e:?}");
    }
}
