// What tch 0.24 does not expose of libtorch 2.11, as a few C functions for
// src/runtime/native/mod.rs: CUDA graphs on a side stream, channels-last tensors, the TF32
// switches, a FLOP counter and the profiler's traces.
//
// Tensors cross as tch passes them: a pointer to a heap `at::Tensor` (torch-sys' `tensor`);
// a returned tensor is a new heap `at::Tensor` that the Rust side owns. Every function catches
// C++ exceptions and reports them as text in `err` (a caller's buffer), returning nonzero.
//
// build.rs defines VISIOND_CUDA_GRAPHS when the CUDA runtime headers are at hand (the venv's
// nvidia/cu13/include with nvidia-cuda-crt) and libtorch has CUDA; without it the graph
// functions exist and say why graphs are unavailable.

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <c10/core/Event.h>
#include <c10/core/MemoryFormat.h>
#include <torch/csrc/autograd/profiler_kineto.h>

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

#ifdef VISIOND_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

void write_error(char* err, size_t len, const char* message) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", message);
  }
}

template <typename F>
int guarded(char* err, size_t len, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    // libtorch's messages end with a C++ backtrace hint after the first line; keep it short.
    std::string text = e.what();
    auto cut = text.find("\nException raised from");
    if (cut != std::string::npos) {
      text.resize(cut);
    }
    write_error(err, len, text.c_str());
  } catch (...) {
    write_error(err, len, "unknown C++ exception");
  }
  return 1;
}

#ifdef VISIOND_CUDA_GRAPHS
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
#endif

}  // namespace

extern "C" {

// 1 when this build can capture CUDA graphs (headers and libtorch_cuda were at hand).
int visiond_cuda_graphs_compiled() {
#ifdef VISIOND_CUDA_GRAPHS
  return 1;
#else
  return 0;
#endif
}

// Process-wide TF32 for f32 matrix products (cuBLAS) and convolutions (cuDNN).
int visiond_set_tf32(int allow, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto precision = allow ? at::Float32Precision::TF32 : at::Float32Precision::IEEE;
    auto& context = at::globalContext();
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, precision);
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, precision);
  });
}

// 1 when both switches are TF32, 0 when neither is, 2 when they differ.
int visiond_tf32_state() {
  auto& context = at::globalContext();
  bool matmul = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
                at::Float32Precision::TF32;
  bool conv = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) ==
              at::Float32Precision::TF32;
  return matmul && conv ? 1 : (!matmul && !conv ? 0 : 2);
}

int visiond_channels_last(const at::Tensor* input, at::Tensor** out, char* err, size_t len) {
  return guarded(err, len, [&] {
    *out = new at::Tensor(input->contiguous(c10::MemoryFormat::ChannelsLast));
  });
}

int visiond_is_channels_last(const at::Tensor* input) {
  return input->dim() == 4 && input->is_contiguous(c10::MemoryFormat::ChannelsLast) ? 1 : 0;
}

// A copy of a CPU tensor in page-locked memory (libtorch's caching host allocator). tch's
// `pin_memory` always passes a device, which libtorch 2.11 deprecates with a warning on
// every call: two lines on stderr per frame.
int visiond_pin_memory(const at::Tensor* input, at::Tensor** out, char* err, size_t len) {
  return guarded(err, len, [&] { *out = new at::Tensor(input->pin_memory()); });
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

int visiond_flops_start(char* err, size_t len) {
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

int visiond_flops_stop(double* flops, char* err, size_t len) {
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
int visiond_trace_start(int cuda, char* err, size_t len) {
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
int visiond_trace_stop(const char* path, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr) {
      result->save(path);
    }
  });
}

// --- CUDA graphs --------------------------------------------------------------------------

// 1 when graphs can be captured on `device` here; otherwise 0 with the reason in `why`.
int visiond_cuda_graphs_available(int device, char* why, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  int available = 0;
  int failed = guarded(why, len, [&] {
    if (!at::globalContext().hasCUDA()) {
      write_error(why, len, "libtorch sees no CUDA device");
      return;
    }
    int count = c10::cuda::device_count();
    if (device < 0 || device >= count) {
      std::string text = "device cuda:" + std::to_string(device) + " does not exist (" +
                         std::to_string(count) + " visible)";
      write_error(why, len, text.c_str());
      return;
    }
    available = 1;
  });
  return failed ? 0 : available;
#else
  (void)device;
  write_error(why, len,
              "this build has no CUDA graph support (no CUDA runtime headers when it was built)");
  return 0;
#endif
}

void* visiond_graph_context_new(int device, char* err, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  GraphContext* context = nullptr;
  guarded(err, len, [&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    context = new GraphContext{index, c10::cuda::getStreamFromPool(false, index),
                               at::cuda::graph_pool_handle(), std::nullopt};
  });
  return context;
#else
  (void)device;
  write_error(err, len, "this build has no CUDA graph support");
  return nullptr;
#endif
}

void visiond_graph_context_free(void* handle) {
#ifdef VISIOND_CUDA_GRAPHS
  delete static_cast<GraphContext*>(handle);
#else
  (void)handle;
#endif
}

// Makes the context's side stream current on this thread, after the work already queued on
// the caller's stream (so it sees the inputs the caller wrote).
int visiond_graph_context_enter(void* handle, char* err, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  return guarded(err, len, [&] {
    auto* context = static_cast<GraphContext*>(handle);
    if (context->caller) {
      throw std::runtime_error("the graph side stream is already entered");
    }
    auto caller = c10::cuda::getCurrentCUDAStream(context->device);
    order_after(caller, context->stream);
    context->caller = caller;
    c10::cuda::setCurrentCUDAStream(context->stream);
  });
#else
  (void)handle;
  write_error(err, len, "this build has no CUDA graph support");
  return 1;
#endif
}

// Back to the caller's stream, which then waits for what the side stream queued.
int visiond_graph_context_exit(void* handle, char* err, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  return guarded(err, len, [&] {
    auto* context = static_cast<GraphContext*>(handle);
    if (!context->caller) {
      return;
    }
    c10::cuda::setCurrentCUDAStream(*context->caller);
    order_after(context->stream, *context->caller);
    context->caller.reset();
  });
#else
  (void)handle;
  write_error(err, len, "this build has no CUDA graph support");
  return 1;
#endif
}

// Begins capturing this thread's work on the (entered) side stream into a new graph. Other
// threads may keep using CUDA meanwhile (thread-local capture mode).
void* visiond_graph_capture_begin(void* handle, char* err, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  Graph* graph = nullptr;
  guarded(err, len, [&] {
    auto* context = static_cast<GraphContext*>(handle);
    auto owned = std::make_unique<Graph>();
    owned->graph.capture_begin(context->pool, cudaStreamCaptureModeThreadLocal);
    graph = owned.release();
  });
  return graph;
#else
  (void)handle;
  write_error(err, len, "this build has no CUDA graph support");
  return nullptr;
#endif
}

int visiond_graph_capture_end(void* graph, char* err, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  return guarded(err, len, [&] { static_cast<Graph*>(graph)->graph.capture_end(); });
#else
  (void)graph;
  write_error(err, len, "this build has no CUDA graph support");
  return 1;
#endif
}

// Launches the captured work on the caller's current stream.
int visiond_graph_replay(void* graph, char* err, size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  return guarded(err, len, [&] { static_cast<Graph*>(graph)->graph.replay(); });
#else
  (void)graph;
  write_error(err, len, "this build has no CUDA graph support");
  return 1;
#endif
}

void visiond_graph_free(void* graph) {
#ifdef VISIOND_CUDA_GRAPHS
  delete static_cast<Graph*>(graph);
#else
  (void)graph;
#endif
}

// --- memory --------------------------------------------------------------------------------

// Bytes libtorch's caching allocator holds for tensors on `device` (`allocated`) and has
// reserved from the driver (`reserved`). Nonzero, with the reason, where that cannot be known.
// Only asks a device that is already initialised: reading stats must not create a CUDA context.
int visiond_cuda_memory(int device, uint64_t* allocated, uint64_t* reserved, char* err,
                        size_t len) {
#ifdef VISIOND_CUDA_GRAPHS
  return guarded(err, len, [&] {
    if (!at::globalContext().hasCUDA()) {
      throw std::runtime_error("libtorch sees no CUDA device");
    }
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = static_cast<uint64_t>(stats.allocated_bytes[all].current);
    *reserved = static_cast<uint64_t>(stats.reserved_bytes[all].current);
  });
#else
  (void)device;
  (void)allocated;
  (void)reserved;
  write_error(err, len, "this build has no CUDA support in its shim");
  return 1;
#endif
}

}  // extern "C"
