// What tch 0.24 does not expose of libtorch 2.11, as a few C functions for
// src/runtime/native/mod.rs: CUDA graphs on a side stream, channels-last tensors, the TF32
// switches, a FLOP counter and the profiler's traces.
//
// Tensors cross as tch passes them: a pointer to a heap `at::Tensor` (torch-sys' `tensor`);
// a returned tensor is a new heap `at::Tensor` that the Rust side owns.
//
// No C++ exception may unwind into Rust: every function is `noexcept` and runs its body in
// `guarded`, which catches everything and returns a status (kOk, kFailed with the message in
// `err`, a caller's buffer, or kNoCuda). Functions that cannot fail (frees, queries) catch
// internally and fall back to a harmless answer.
//
// build.rs defines VISIOND_SHIM_CUDA when the CUDA runtime headers are at hand (the venv's
// nvidia/cu13/include with nvidia-cuda-crt) and libtorch has CUDA; without it every CUDA
// function exists and returns kNoCuda.

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/MemoryFormat.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef VISIOND_SHIM_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nvrtc.h>

#include <map>
#include <mutex>
#endif

#include "kernels.cuh"

namespace {

// The statuses every fallible function returns (NativeError on the Rust side).
constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kNoCuda = 2;

const char kNoCudaMessage[] =
    "this build has no CUDA support in its shim (no CUDA runtime headers when it was built)";

// Thrown where a CUDA-only path is reached in a build without CUDA; `guarded` turns it into
// kNoCuda, so the Rust side can tell it from a failure.
struct NoCudaInShim : std::exception {
  const char* what() const noexcept override { return kNoCudaMessage; }
};

void write_error(char* err, size_t len, const char* message) noexcept {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", message);
  }
}

// The status for a build without CUDA, with its message.
int no_cuda(char* err, size_t len) noexcept {
  write_error(err, len, kNoCudaMessage);
  return kNoCuda;
}

// Runs `body`, turning any exception into a status and a message; nothing escapes. The message
// is copied without allocating (a handler that threw bad_alloc would escape `noexcept`).
template <typename F>
int guarded(char* err, size_t len, F&& body) noexcept {
  try {
    body();
    return kOk;
  } catch (const NoCudaInShim&) {
    return no_cuda(err, len);
  } catch (const std::exception& e) {
    // libtorch's messages end with a C++ backtrace hint after the first line; keep it short.
    const char* text = e.what();
    const char* cut = std::strstr(text, "\nException raised from");
    int shown = cut != nullptr ? static_cast<int>(cut - text) : INT_MAX;
    if (err != nullptr && len > 0) {
      std::snprintf(err, len, "%.*s", shown, text);
    }
  } catch (...) {
    write_error(err, len, "unknown C++ exception");
  }
  return kFailed;
}

// The Rust value that owns a tensor's bytes (visiond_tensor_over_bytes), released through the
// Rust side's callback when the last holder of this object lets go. Never copied: exactly one
// release per owner.
class BytesOwner {
 public:
  BytesOwner(void (*release)(void*), void* owner) noexcept : release_(release), owner_(owner) {}
  BytesOwner(const BytesOwner&) = delete;
  BytesOwner& operator=(const BytesOwner&) = delete;
  ~BytesOwner() { release_(owner_); }

 private:
  void (*release_)(void*);
  void* owner_;
};

#ifdef VISIOND_SHIM_CUDA
// One model's graphs: the side stream they are captured on and the memory pool they share.
// Graphs of one context are replayed one at a time on the caller's stream, so sharing the
// pool is safe: each capture's live outputs are held by the caller and never reused.
struct GraphContext {
  c10::DeviceIndex device;
  c10::cuda::CUDAStream stream;
  at::cuda::MempoolId_t pool;
  // The caller's stream while the side stream is current (set by enter, cleared by exit).
  std::optional<c10::cuda::CUDAStream> caller;
};

struct Graph {
  at::cuda::CUDAGraph graph;
};

// Makes `later` wait (on the device) for the work queued so far on `earlier`. A c10 event
// rather than the CUDA runtime's, so the shim needs no libcudart of its own.
void order_after(const c10::cuda::CUDAStream& earlier, const c10::cuda::CUDAStream& later) {
  c10::Event event(c10::DeviceType::CUDA);
  event.record(earlier.unwrap());
  event.block(later.unwrap());
}

// The calling thread's side stream on `device`: taken from libtorch's high-priority pool on
// the thread's first use and kept for its life. One per thread, not one per call: the caching
// allocator keeps freed blocks per stream, so a thread that cycled through the pool's 32
// streams would leave its staging memory cached up to 32 times over. Pool streams are never
// destroyed, so the map holds plain handles.
c10::cuda::CUDAStream thread_side_stream(c10::DeviceIndex device) {
  thread_local std::map<c10::DeviceIndex, c10::cuda::CUDAStream> taken;
  auto found = taken.find(device);
  if (found == taken.end()) {
    found = taken.emplace(device, c10::cuda::getStreamFromPool(true, device)).first;
  }
  return found->second;
}
#endif

}  // namespace

extern "C" {

// 1 when the shim was built with its CUDA part (graphs, events, side streams, kernels).
int visiond_shim_has_cuda() noexcept {
#ifdef VISIOND_SHIM_CUDA
  return 1;
#else
  return 0;
#endif
}

// Process-wide TF32 for f32 matrix products (cuBLAS) and convolutions (cuDNN).
int visiond_set_tf32(int allow, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    auto precision = allow ? at::Float32Precision::TF32 : at::Float32Precision::IEEE;
    auto& context = at::globalContext();
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, precision);
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, precision);
  });
}

// 1 when both switches are TF32, 0 when neither is, 2 when they differ (or cannot be read).
int visiond_tf32_state() noexcept {
  int state = 2;
  guarded(nullptr, 0, [&] {
    auto& context = at::globalContext();
    bool matmul = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
                  at::Float32Precision::TF32;
    bool conv = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) ==
                at::Float32Precision::TF32;
    state = matmul && conv ? 1 : (!matmul && !conv ? 0 : 2);
  });
  return state;
}

int visiond_channels_last(const at::Tensor* input, at::Tensor** out, char* err,
                          size_t len) noexcept {
  return guarded(err, len, [&] {
    *out = new at::Tensor(input->contiguous(c10::MemoryFormat::ChannelsLast));
  });
}

// 1 for a 4-D channels-last tensor; 0 otherwise (an undefined tensor included).
int visiond_is_channels_last(const at::Tensor* input) noexcept {
  int yes = 0;
  guarded(nullptr, 0, [&] {
    yes = input->dim() == 4 && input->is_contiguous(c10::MemoryFormat::ChannelsLast) ? 1 : 0;
  });
  return yes;
}

// A copy of a CPU tensor in page-locked memory (libtorch's caching host allocator). tch's
// `pin_memory` always passes a device, which libtorch 2.11 deprecates with a warning on
// every call: two lines on stderr per frame.
int visiond_pin_memory(const at::Tensor* input, at::Tensor** out, char* err, size_t len) noexcept {
  return guarded(err, len, [&] { *out = new at::Tensor(input->pin_memory()); });
}

// A 1-D uint8 CPU tensor over `length` bytes at `data`, without a copy, whose storage owns
// them: `release(owner)` runs exactly once, when the last tensor sharing the storage is freed
// (on whichever thread that is), or before returning if no tensor was made. The bytes must
// stay valid and unchanged until then; nothing writes through the tensor.
int visiond_tensor_over_bytes(const uint8_t* data, int64_t length, void (*release)(void*),
                              void* owner, at::Tensor** out, char* err, size_t len) noexcept {
  std::shared_ptr<BytesOwner> holder;
  try {
    holder = std::make_shared<BytesOwner>(release, owner);
  } catch (...) {
    // Without memory for the holder the owner cannot be tracked: release it now.
    release(owner);
    write_error(err, len, "out of memory");
    return kFailed;
  }
  // The deleter holds the only other reference: when the storage frees it (or from_blob
  // fails and drops it), `holder` below is the last and releases the owner as it goes.
  return guarded(err, len, [&] {
    auto tensor = at::from_blob(const_cast<uint8_t*>(data), {length}, [holder](void*) {},
                                at::TensorOptions().dtype(at::kByte).device(at::kCPU));
    *out = new at::Tensor(std::move(tensor));
  });
}

// --- FLOP counting ------------------------------------------------------------------------
// A thread-local RecordFunction observer that adds up the floating-point operations of the
// matrix products, convolutions and attention this thread runs: 2 per multiply-add, the
// convention FLOP counters use. Operators nested inside attention (the math fallback's own
// products) are not counted twice.

namespace {
thread_local double counted_flops = 0.0;
thread_local int attention_depth = 0;
thread_local std::optional<at::CallbackHandle> flop_observer;

std::vector<int64_t> sizes_of(const c10::IValue& value) {
  if (value.isTensor()) {
    return value.toTensor().sizes().vec();
  }
  return {};
}

std::vector<int64_t> ints_of(const c10::IValue& value) {
  if (value.isIntList()) {
    return value.toIntVector();
  }
  return {};
}

double product(const std::vector<int64_t>& dims) {
  double total = 1.0;
  for (auto d : dims) {
    total *= static_cast<double>(d);
  }
  return total;
}

// A convolution's FLOPs from aten::convolution's arguments (input, weight, bias, stride,
// padding, dilation, transposed, output_padding, groups).
double convolution_flops(c10::ArrayRef<const c10::IValue> in) {
  if (in.size() < 7) {
    return 0.0;
  }
  auto x = sizes_of(in[0]);
  auto w = sizes_of(in[1]);
  if (x.size() < 3 || w.size() != x.size()) {
    return 0.0;
  }
  // Per output (or, transposed, per input) element: one tap of the kernel over its group.
  double taps = product(std::vector<int64_t>(w.begin() + 1, w.end()));
  if (in[6].isBool() && in[6].toBool()) {
    return 2.0 * product(x) * taps;
  }
  auto stride = ints_of(in[3]);
  auto padding = ints_of(in[4]);
  auto dilation = ints_of(in[5]);
  size_t spatial = x.size() - 2;
  if (stride.size() != spatial || padding.size() != spatial || dilation.size() != spatial) {
    return 0.0;
  }
  double outputs = static_cast<double>(x[0]) * static_cast<double>(w[0]);
  for (size_t i = 0; i < spatial; ++i) {
    int64_t extent = dilation[i] * (w[i + 2] - 1) + 1;
    outputs *= static_cast<double>((x[i + 2] + 2 * padding[i] - extent) / stride[i] + 1);
  }
  return 2.0 * outputs * taps;
}

std::unique_ptr<at::ObserverContext> count_start(const at::RecordFunction& fn) {
  const std::string name = fn.name();
  const bool attention = name == "aten::scaled_dot_product_attention";
  if (attention) {
    attention_depth += 1;
  }
  if (attention_depth > (attention ? 1 : 0)) {
    return nullptr;
  }
  auto in = fn.inputs();
  double flops = 0.0;
  if (name == "aten::mm" && in.size() >= 2) {
    auto a = sizes_of(in[0]), b = sizes_of(in[1]);
    if (a.size() == 2 && b.size() == 2) flops = 2.0 * a[0] * a[1] * b[1];
  } else if (name == "aten::addmm" && in.size() >= 3) {
    auto a = sizes_of(in[1]), b = sizes_of(in[2]);
    if (a.size() == 2 && b.size() == 2) flops = 2.0 * a[0] * a[1] * b[1];
  } else if (name == "aten::bmm" && in.size() >= 2) {
    auto a = sizes_of(in[0]), b = sizes_of(in[1]);
    if (a.size() == 3 && b.size() == 3) flops = 2.0 * a[0] * a[1] * a[2] * b[2];
  } else if (name == "aten::baddbmm" && in.size() >= 3) {
    auto a = sizes_of(in[1]), b = sizes_of(in[2]);
    if (a.size() == 3 && b.size() == 3) flops = 2.0 * a[0] * a[1] * a[2] * b[2];
  } else if (name == "aten::convolution") {
    flops = convolution_flops(in);
  } else if (attention && in.size() >= 3) {
    // q [..., N, d], k [..., M, d], v [..., M, dv]: QK^T is 2·N·M·d, PV is 2·N·M·dv.
    auto q = sizes_of(in[0]), k = sizes_of(in[1]), v = sizes_of(in[2]);
    if (q.size() >= 2 && k.size() >= 2 && v.size() >= 2) {
      double batch = product(std::vector<int64_t>(q.begin(), q.end() - 2));
      double n = q[q.size() - 2], m = k[k.size() - 2];
      flops = 2.0 * batch * n * m * (q.back() + v.back());
    }
  }
  counted_flops += flops;
  return nullptr;
}

void count_end(const at::RecordFunction& fn, at::ObserverContext*) {
  if (attention_depth > 0 && std::string(fn.name()) == "aten::scaled_dot_product_attention") {
    attention_depth -= 1;
  }
}
}  // namespace

int visiond_flops_start(char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    if (flop_observer) {
      throw std::runtime_error("FLOP counting already started on this thread");
    }
    counted_flops = 0.0;
    attention_depth = 0;
    flop_observer = at::addThreadLocalCallback(
        at::RecordFunctionCallback(count_start, count_end).needsInputs(true));
  });
}

int visiond_flops_stop(double* flops, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    if (flop_observer) {
      at::removeCallback(*flop_observer);
      flop_observer.reset();
    }
    *flops = counted_flops;
  });
}

// --- tracing ------------------------------------------------------------------------------

// Starts the Kineto profiler on this thread: operators with their shapes, and the GPU's
// kernels when `cuda` is set.
int visiond_trace_start(int cuda, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    using torch::profiler::impl::ActivityType;
    using torch::profiler::impl::ProfilerConfig;
    using torch::profiler::impl::ProfilerState;
    ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda) {
      activities.insert(ActivityType::CUDA);
    }
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stops the profiler and writes a Chrome trace (chrome://tracing, Perfetto) to `path`.
int visiond_trace_stop(const char* path, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr) {
      result->save(path);
    }
  });
}

// --- CUDA graphs --------------------------------------------------------------------------

// kOk when graphs can be captured on `device` here; otherwise the reason.
int visiond_cuda_graphs_available(int device, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    if (!at::globalContext().hasCUDA()) {
      throw std::runtime_error("libtorch sees no CUDA device");
    }
    int count = c10::cuda::device_count();
    if (device < 0 || device >= count) {
      throw std::runtime_error("device cuda:" + std::to_string(device) + " does not exist (" +
                               std::to_string(count) + " visible)");
    }
#else
    (void)device;
    throw NoCudaInShim();
#endif
  });
}

int visiond_graph_context_new(int device, void** out, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    auto index = static_cast<c10::DeviceIndex>(device);
    // Low priority: the frame path's side streams come from the high-priority pool, never
    // this stream (thread_side_stream).
    *out = new GraphContext{index, c10::cuda::getStreamFromPool(false, index),
                            at::cuda::graph_pool_handle(), std::nullopt};
#else
    (void)device;
    (void)out;
    throw NoCudaInShim();
#endif
  });
}

void visiond_graph_context_free(void* handle) noexcept {
#ifdef VISIOND_SHIM_CUDA
  delete static_cast<GraphContext*>(handle);
#else
  (void)handle;
#endif
}

// Makes the context's side stream current on this thread, after the work already queued on
// the caller's stream (so it sees the inputs the caller wrote).
int visiond_graph_context_enter(void* handle, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    auto* context = static_cast<GraphContext*>(handle);
    if (context->caller) {
      throw std::runtime_error("the graph side stream is already entered");
    }
    auto caller = c10::cuda::getCurrentCUDAStream(context->device);
    order_after(caller, context->stream);
    context->caller = caller;
    c10::cuda::setCurrentCUDAStream(context->stream);
#else
    (void)handle;
    throw NoCudaInShim();
#endif
  });
}

// Back to the caller's stream, which then waits for what the side stream queued.
int visiond_graph_context_exit(void* handle, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    auto* context = static_cast<GraphContext*>(handle);
    if (!context->caller) {
      return;
    }
    c10::cuda::setCurrentCUDAStream(*context->caller);
    order_after(context->stream, *context->caller);
    context->caller.reset();
#else
    (void)handle;
    throw NoCudaInShim();
#endif
  });
}

// Begins capturing this thread's work on the (entered) side stream into a new graph. Other
// threads may keep using CUDA meanwhile (thread-local capture mode).
int visiond_graph_capture_begin(void* handle, void** out, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    auto* context = static_cast<GraphContext*>(handle);
    auto owned = std::make_unique<Graph>();
    owned->graph.capture_begin(context->pool, cudaStreamCaptureModeThreadLocal);
    *out = owned.release();
#else
    (void)handle;
    (void)out;
    throw NoCudaInShim();
#endif
  });
}

int visiond_graph_capture_end(void* graph, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    static_cast<Graph*>(graph)->graph.capture_end();
#else
    (void)graph;
    throw NoCudaInShim();
#endif
  });
}

// Launches the captured work on the caller's current stream.
int visiond_graph_replay(void* graph, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    static_cast<Graph*>(graph)->graph.replay();
#else
    (void)graph;
    throw NoCudaInShim();
#endif
  });
}

void visiond_graph_free(void* graph) noexcept {
#ifdef VISIOND_SHIM_CUDA
  delete static_cast<Graph*>(graph);
#else
  (void)graph;
#endif
}

// --- events and side streams ---------------------------------------------------------------
// A frame staged in a source thread, and a batch's results, are marked by an event recorded
// after their last kernel; the thread that reads them next waits for that event alone, on a
// side stream of its own, so its work does not queue behind everything else on the main one.

// A new event recorded on `device`'s current stream.
int visiond_event_record(int device, void** out, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    auto owned = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
    owned->record(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).unwrap());
    *out = owned.release();
#else
    (void)device;
    (void)out;
    throw NoCudaInShim();
#endif
  });
}

// Blocks the calling thread until the work before the event's record is done.
int visiond_event_synchronize(void* event, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    static_cast<c10::Event*>(event)->synchronize();
#else
    (void)event;
    throw NoCudaInShim();
#endif
  });
}

// Makes `device`'s current stream (on the device, not the host) wait for the event.
int visiond_event_block(void* event, int device, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    static_cast<c10::Event*>(event)->block(
        c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).unwrap());
#else
    (void)event;
    (void)device;
    throw NoCudaInShim();
#endif
  });
}

// Tells libtorch's caching allocator that `device`'s current stream uses the tensor's memory:
// when the tensor is freed, the memory is not reused before that stream's work up to then is
// done (a tensor made on a side stream and read on the main one). A CPU tensor needs nothing.
int visiond_record_stream(const at::Tensor* tensor, int device, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    if (!tensor->is_cuda()) {
      return;
    }
#ifdef VISIOND_SHIM_CUDA
    tensor->record_stream(
        c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).unwrap());
#else
    (void)device;
    throw NoCudaInShim();
#endif
  });
}

void visiond_event_free(void* event) noexcept {
#ifdef VISIOND_SHIM_CUDA
  delete static_cast<c10::Event*>(event);
#else
  (void)event;
#endif
}

// Makes the calling thread's side stream on `device` (thread_side_stream: non-blocking, it
// never waits for the legacy default stream) current; `*previous` is the stream to restore.
// From the high-priority pool: the graphs are captured on low-priority pool streams, and work
// another thread queued on a stream while it is being captured would end up inside the graph.
int visiond_side_stream_enter(int device, void** previous, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    auto index = static_cast<c10::DeviceIndex>(device);
    auto side = thread_side_stream(index);
    auto owned = std::make_unique<c10::cuda::CUDAStream>(c10::cuda::getCurrentCUDAStream(index));
    c10::cuda::setCurrentCUDAStream(side);
    *previous = owned.release();
#else
    (void)device;
    (void)previous;
    throw NoCudaInShim();
#endif
  });
}

// Restores the stream `visiond_side_stream_enter` replaced, and frees its record.
int visiond_side_stream_exit(void* previous, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    std::unique_ptr<c10::cuda::CUDAStream> stream(static_cast<c10::cuda::CUDAStream*>(previous));
    c10::cuda::setCurrentCUDAStream(*stream);
#else
    (void)previous;
    throw NoCudaInShim();
#endif
  });
}

// The id of `device`'s current stream on this thread (to tell side streams apart in tests).
int visiond_current_stream(int device, int64_t* id, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    *id = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).id();
#else
    (void)device;
    (void)id;
    throw NoCudaInShim();
#endif
  });
}

// --- memory --------------------------------------------------------------------------------

// Bytes libtorch's caching allocator holds for tensors on `device` (`allocated`) and has
// reserved from the driver (`reserved`). A failure, with the reason, where that cannot be
// known. Only asks a device that is already initialised: reading stats must not create a CUDA
// context.
int visiond_cuda_memory(int device, uint64_t* allocated, uint64_t* reserved, char* err,
                        size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    if (!at::globalContext().hasCUDA()) {
      throw std::runtime_error("libtorch sees no CUDA device");
    }
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = static_cast<uint64_t>(stats.allocated_bytes[all].current);
    *reserved = static_cast<uint64_t>(stats.reserved_bytes[all].current);
#else
    (void)device;
    (void)allocated;
    (void)reserved;
    throw NoCudaInShim();
#endif
  });
}

}  // extern "C"

// --- fused colour conversions (kernels.cuh) -----------------------------------------------
// On the CPU the per-pixel functions run in loops here (the tests' way to check them against
// the tensor-op reference); on CUDA as kernels that NVRTC compiles at run time, loaded once per
// device with the CUDA runtime's context-independent libraries. libcudart is already in the
// process (libtorch_cuda needs it) and NVRTC sits beside it in the wheel, so both are looked up
// at run time: nothing new to link, and a box without them keeps the tensor-op conversions.

namespace {

void check_plane(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  if (t.dim() != 2 || t.scalar_type() != at::kByte || t.size(0) != rows || t.size(1) != cols) {
    throw std::runtime_error(std::string(name) + " plane: expected uint8 [" +
                             std::to_string(rows) + ", " + std::to_string(cols) + "], got " +
                             std::string(c10::toString(t.scalar_type())) + " " +
                             c10::str(t.sizes()));
  }
}

// The kernels index pixels with `int`s and compute (height + 1) / 2, 2 * j + 1 and the like:
// a picture's sides are kept well inside that range (real video is below 2^15).
constexpr int64_t kLargestSide = int64_t{1} << 30;

void check_side(int64_t side, const char* what) {
  if (side > kLargestSide) {
    throw std::runtime_error(std::string("a picture ") + what + " of " + std::to_string(side) +
                             " pixels is beyond the conversions' limit of " +
                             std::to_string(kLargestSide));
  }
}

void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name) {
  if (a.device() != b.device()) {
    throw std::runtime_error(std::string(name) + " is on " + a.device().str() + ", not " +
                             b.device().str());
  }
}

// params: filtered, h_cosited, v_cosited, then the five coefficients.
VkYuvToRgb yuv_to_rgb_args(const at::Tensor& y, const at::Tensor& u, const at::Tensor& v,
                           const int32_t* params, at::Tensor* out) {
  if (y.dim() != 2) {
    throw std::runtime_error("Y plane: expected [H, W], got " + c10::str(y.sizes()));
  }
  int64_t height = y.size(0), width = y.size(1);
  check_side(height, "height");
  check_side(width, "width");
  check_plane(y, "Y", height, width);
  check_plane(u, "U", (height + 1) / 2, (width + 1) / 2);
  check_plane(v, "V", (height + 1) / 2, (width + 1) / 2);
  check_same_device(u, y, "U plane");
  check_same_device(v, y, "V plane");
  if (u.stride(0) != v.stride(0) || u.stride(1) != v.stride(1)) {
    throw std::runtime_error("U and V planes with different strides");
  }
  *out = at::empty({height, width, 3}, y.options());
  VkYuvToRgb a{};
  a.y = y.const_data_ptr<uint8_t>();
  a.u = u.const_data_ptr<uint8_t>();
  a.v = v.const_data_ptr<uint8_t>();
  a.out = out->mutable_data_ptr<uint8_t>();
  a.y_row = y.stride(0);
  a.y_col = y.stride(1);
  a.c_row = u.stride(0);
  a.c_col = u.stride(1);
  a.height = static_cast<int>(height);
  a.width = static_cast<int>(width);
  a.filtered = params[0];
  a.h_cosited = params[1];
  a.v_cosited = params[2];
  for (int i = 0; i < 5; ++i) {
    a.coef[i] = params[3 + i];
  }
  return a;
}

// params: h_cosited, v_cosited, then the twelve coefficients. The outputs are views (of the
// picture's buffer) the conversion writes into.
VkRgbToYuv rgb_to_yuv_args(const at::Tensor& rgb, const at::Tensor& y, const at::Tensor& u,
                           const at::Tensor& v, const int32_t* params) {
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte) {
    throw std::runtime_error("expected uint8 [H, W, 3] RGB, got " +
                             std::string(c10::toString(rgb.scalar_type())) + " " +
                             c10::str(rgb.sizes()));
  }
  int64_t height = rgb.size(0), width = rgb.size(1);
  check_side(height, "height");
  check_side(width, "width");
  check_plane(y, "Y", height, width);
  check_plane(u, "U", (height + 1) / 2, (width + 1) / 2);
  check_plane(v, "V", (height + 1) / 2, (width + 1) / 2);
  for (const auto* t : {&y, &u, &v}) {
    check_same_device(*t, rgb, "an output plane");
  }
  if (y.stride(1) != 1 || u.stride(0) != v.stride(0) || u.stride(1) != v.stride(1)) {
    throw std::runtime_error("output planes with unexpected strides");
  }
  VkRgbToYuv a{};
  a.rgb = rgb.const_data_ptr<uint8_t>();
  a.y = static_cast<uint8_t*>(y.data_ptr());
  a.u = static_cast<uint8_t*>(u.data_ptr());
  a.v = static_cast<uint8_t*>(v.data_ptr());
  a.rgb_row = rgb.stride(0);
  a.rgb_col = rgb.stride(1);
  a.rgb_chan = rgb.stride(2);
  a.y_row = y.stride(0);
  a.c_row = u.stride(0);
  a.c_col = u.stride(1);
  a.height = static_cast<int>(height);
  a.width = static_cast<int>(width);
  a.h_cosited = params[0];
  a.v_cosited = params[1];
  for (int i = 0; i < 12; ++i) {
    a.coef[i] = params[2 + i];
  }
  return a;
}

#ifdef VISIOND_SHIM_CUDA
// The CUDA runtime and NVRTC functions the kernels need, found in the process at run time.
struct CudaApi {
  decltype(&cudaLibraryLoadData) library_load_data = nullptr;
  decltype(&cudaLibraryGetKernel) library_get_kernel = nullptr;
  // cudaLaunchKernel has C++ template overloads; the C function's type, spelled out.
  cudaError_t (*launch_kernel)(const void*, dim3, dim3, void**, size_t, cudaStream_t) = nullptr;
  decltype(&cudaGetErrorString) error_string = nullptr;
  decltype(&cudaDeviceGetAttribute) device_attribute = nullptr;
  decltype(&nvrtcCreateProgram) create_program = nullptr;
  decltype(&nvrtcCompileProgram) compile_program = nullptr;
  decltype(&nvrtcGetProgramLogSize) log_size = nullptr;
  decltype(&nvrtcGetProgramLog) log = nullptr;
  decltype(&nvrtcGetCUBINSize) cubin_size = nullptr;
  decltype(&nvrtcGetCUBIN) cubin = nullptr;
  decltype(&nvrtcGetPTXSize) ptx_size = nullptr;
  decltype(&nvrtcGetPTX) ptx = nullptr;
  decltype(&nvrtcDestroyProgram) destroy_program = nullptr;
  decltype(&nvrtcGetNumSupportedArchs) num_archs = nullptr;
  decltype(&nvrtcGetSupportedArchs) archs = nullptr;
  decltype(&nvrtcGetErrorString) nvrtc_error = nullptr;
  std::string missing;  // why the API is unusable; empty when every function was found
};

template <typename T>
bool find(void* library, const char* name, T* slot, std::string* missing) {
  *slot = reinterpret_cast<T>(dlsym(library, name));
  if (*slot == nullptr && missing->empty()) {
    *missing = std::string(name) + " not found";
  }
  return *slot != nullptr;
}

CudaApi load_cuda_api() {
  CudaApi api;
  std::string* missing = &api.missing;
  if (!find(RTLD_DEFAULT, "cudaLibraryLoadData", &api.library_load_data, missing)) {
    api.missing = "the CUDA runtime in this process has no cudaLibraryLoadData (CUDA 12 or later "
                  "is needed)";
    return api;
  }
  find(RTLD_DEFAULT, "cudaLibraryGetKernel", &api.library_get_kernel, missing);
  find(RTLD_DEFAULT, "cudaLaunchKernel", &api.launch_kernel, missing);
  find(RTLD_DEFAULT, "cudaGetErrorString", &api.error_string, missing);
  find(RTLD_DEFAULT, "cudaDeviceGetAttribute", &api.device_attribute, missing);
  // NVRTC beside the CUDA runtime (the wheel's nvidia/cu13/lib), else wherever the loader finds it.
  std::vector<std::string> candidates;
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(api.library_load_data), &info) != 0 &&
      info.dli_fname != nullptr) {
    std::string path = info.dli_fname;
    auto slash = path.rfind('/');
    if (slash != std::string::npos) {
      candidates.push_back(path.substr(0, slash + 1) + "libnvrtc.so." +
                           std::to_string(CUDART_VERSION / 1000));
    }
  }
  candidates.push_back("libnvrtc.so." + std::to_string(CUDART_VERSION / 1000));
  candidates.push_back("libnvrtc.so");
  void* nvrtc = nullptr;
  for (const auto& candidate : candidates) {
    nvrtc = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (nvrtc != nullptr) {
      break;
    }
  }
  if (nvrtc == nullptr) {
    api.missing = "NVRTC not found (tried " + candidates.front() + " and the loader's path)";
    return api;
  }
  // NVRTC opens its builtins library by name when it compiles; the wheel's directory is on no
  // search path, so it is loaded from beside NVRTC first (a loaded library is found by name).
  decltype(&nvrtcVersion) version = nullptr;
  int major = 0, minor = 0;
  if (find(nvrtc, "nvrtcVersion", &version, missing) && version(&major, &minor) == NVRTC_SUCCESS &&
      dladdr(dlsym(nvrtc, "nvrtcVersion"), &info) != 0 && info.dli_fname != nullptr) {
    std::string path = info.dli_fname;
    auto slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    std::string builtins = dir + "libnvrtc-builtins.so." + std::to_string(major) + "." +
                           std::to_string(minor);
    dlopen(builtins.c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
  find(nvrtc, "nvrtcCreateProgram", &api.create_program, missing);
  find(nvrtc, "nvrtcCompileProgram", &api.compile_program, missing);
  find(nvrtc, "nvrtcGetProgramLogSize", &api.log_size, missing);
  find(nvrtc, "nvrtcGetProgramLog", &api.log, missing);
  find(nvrtc, "nvrtcGetCUBINSize", &api.cubin_size, missing);
  find(nvrtc, "nvrtcGetCUBIN", &api.cubin, missing);
  find(nvrtc, "nvrtcGetPTXSize", &api.ptx_size, missing);
  find(nvrtc, "nvrtcGetPTX", &api.ptx, missing);
  find(nvrtc, "nvrtcDestroyProgram", &api.destroy_program, missing);
  find(nvrtc, "nvrtcGetNumSupportedArchs", &api.num_archs, missing);
  find(nvrtc, "nvrtcGetSupportedArchs", &api.archs, missing);
  find(nvrtc, "nvrtcGetErrorString", &api.nvrtc_error, missing);
  return api;
}

const CudaApi& cuda_api() {
  static const CudaApi api = load_cuda_api();
  if (!api.missing.empty()) {
    throw std::runtime_error(api.missing);
  }
  return api;
}

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cuda_api().error_string(status));
  }
}

// The highest architecture NVRTC compiles for.
int newest_arch(const CudaApi& api) {
  int count = 0;
  if (api.num_archs(&count) != NVRTC_SUCCESS || count <= 0) {
    return 0;
  }
  std::vector<int> archs(static_cast<size_t>(count));
  api.archs(archs.data());
  return archs.back();
}

// Compiles `source` for compute capability `arch` (e.g. 90): a CUBIN where NVRTC knows the
// architecture, else PTX for the newest it knows, which the driver finishes compiling.
std::string compile(const std::string& source, int arch) {
  const CudaApi& api = cuda_api();
  int newest = newest_arch(api);
  bool cubin = arch <= newest;
  std::string option = std::string("--gpu-architecture=") + (cubin ? "sm_" : "compute_") +
                       std::to_string(cubin ? arch : newest);
  nvrtcProgram program = nullptr;
  if (api.create_program(&program, source.c_str(), "visiond_kernels.cu", 0, nullptr, nullptr) !=
      NVRTC_SUCCESS) {
    throw std::runtime_error("NVRTC could not create the program");
  }
  const char* options[] = {option.c_str(), "--std=c++17"};
  nvrtcResult status = api.compile_program(program, 2, options);
  std::string image;
  if (status == NVRTC_SUCCESS) {
    size_t size = 0;
    (cubin ? api.cubin_size : api.ptx_size)(program, &size);
    image.resize(size);
    (cubin ? api.cubin : api.ptx)(program, image.data());
  }
  std::string log;
  size_t log_size = 0;
  if (api.log_size(program, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    api.log(program, log.data());
  }
  api.destroy_program(&program);
  if (status != NVRTC_SUCCESS) {
    throw std::runtime_error(std::string("NVRTC (") + option + "): " + api.nvrtc_error(status) +
                             "\n" + log);
  }
  return image;
}

struct DeviceKernels {
  cudaKernel_t yuv_to_rgb = nullptr;
  cudaKernel_t rgb_to_yuv = nullptr;
};

std::mutex kernels_mutex;
std::map<int, DeviceKernels> kernels_by_device;

const DeviceKernels& kernels_on(int device) {
  std::lock_guard<std::mutex> lock(kernels_mutex);
  auto found = kernels_by_device.find(device);
  if (found == kernels_by_device.end()) {
    throw std::runtime_error("the fused conversions are not loaded on cuda:" +
                             std::to_string(device));
  }
  return found->second;
}

void launch(cudaKernel_t kernel, void* args, int64_t columns, int64_t rows, int device) {
  if (columns <= 0 || rows <= 0) {
    return;
  }
  dim3 block(32, 8);
  dim3 grid(static_cast<unsigned>((columns + block.x - 1) / block.x),
            static_cast<unsigned>((rows + block.y - 1) / block.y));
  void* params[] = {args};
  auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
  check_cuda(cuda_api().launch_kernel(reinterpret_cast<const void*>(kernel), grid, block, params,
                                      0, stream.stream()),
             "launching a fused conversion");
}
#endif

}  // namespace

extern "C" {

// Compiles the kernels' source for compute capability `arch` without loading it (no GPU
// needed): the size of the image NVRTC made.
int visiond_kernels_compile(const char* source, int arch, uint64_t* image_bytes, char* err,
                            size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    *image_bytes = compile(source, arch).size();
#else
    (void)source;
    (void)arch;
    (void)image_bytes;
    throw NoCudaInShim();
#endif
  });
}

// Compiles the kernels for CUDA device `device` and loads them there (once; later calls return
// at once).
int visiond_kernels_load(const char* source, int device, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
#ifdef VISIOND_SHIM_CUDA
    std::lock_guard<std::mutex> lock(kernels_mutex);
    if (kernels_by_device.count(device) != 0) {
      return;
    }
    const CudaApi& api = cuda_api();
    int major = 0, minor = 0;
    check_cuda(api.device_attribute(&major, cudaDevAttrComputeCapabilityMajor, device),
               "reading the compute capability");
    check_cuda(api.device_attribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
               "reading the compute capability");
    std::string image = compile(source, major * 10 + minor);
    c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
    cudaLibrary_t library = nullptr;
    check_cuda(api.library_load_data(&library, image.data(), nullptr, nullptr, 0, nullptr,
                                     nullptr, 0),
               "loading the fused conversions");
    DeviceKernels loaded;
    check_cuda(api.library_get_kernel(&loaded.yuv_to_rgb, library, "visiond_yuv420_to_rgb"),
               "finding visiond_yuv420_to_rgb");
    check_cuda(api.library_get_kernel(&loaded.rgb_to_yuv, library, "visiond_rgb_to_yuv420"),
               "finding visiond_rgb_to_yuv420");
    // The library stays loaded for the life of the process.
    kernels_by_device[device] = loaded;
#else
    (void)source;
    (void)device;
    throw NoCudaInShim();
#endif
  });
}

// 4:2:0 planes (uint8 views, any strides) to a new uint8 RGB [H, W, 3] on their device.
int visiond_yuv420_to_rgb(const at::Tensor* y, const at::Tensor* u, const at::Tensor* v,
                          const int32_t* params, at::Tensor** out, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    at::Tensor rgb;
    VkYuvToRgb args = yuv_to_rgb_args(*y, *u, *v, params, &rgb);
    if (y->is_cpu()) {
      for (int row = 0; row < args.height; ++row) {
        for (int col = 0; col < args.width; ++col) {
          vk_yuv_pixel(args, row, col);
        }
      }
    } else {
#ifdef VISIOND_SHIM_CUDA
      int device = y->get_device();
      c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
      launch(kernels_on(device).yuv_to_rgb, &args, args.width, args.height, device);
#else
      throw NoCudaInShim();
#endif
    }
    *out = new at::Tensor(std::move(rgb));
  });
}

// uint8 RGB [H, W, 3] into the Y, U and V plane views given (I420, or NV12's interleaved plane
// as two views one byte apart), on their device.
int visiond_rgb_to_yuv420(const at::Tensor* rgb, const at::Tensor* y, const at::Tensor* u,
                          const at::Tensor* v, const int32_t* params, char* err, size_t len) noexcept {
  return guarded(err, len, [&] {
    VkRgbToYuv args = rgb_to_yuv_args(*rgb, *y, *u, *v, params);
    int rows = (args.height + 1) / 2, columns = (args.width + 1) / 2;
    if (rgb->is_cpu()) {
      for (int i = 0; i < rows; ++i) {
        for (int j = 0; j < columns; ++j) {
          vk_rgb_block(args, i, j);
        }
      }
    } else {
#ifdef VISIOND_SHIM_CUDA
      int device = rgb->get_device();
      c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
      launch(kernels_on(device).rgb_to_yuv, &args, columns, rows, device);
#else
      throw NoCudaInShim();
#endif
    }
  });
}

}  // extern "C"
