// The bridge from Rust to the parts of libtorch's C++ API that the generated C bindings do not
// reach: the fused multi-tensor optimizer kernels (one kernel per step for every parameter
// tensor, on the CPU and on CUDA), the autocast state of a device type (PyTorch AMP), memory
// formats, and a record-function callback that counts operators which force a host
// synchronization on an accelerator. Every entry point catches C++ exceptions and hands their
// message to Rust.

#include <ATen/ATen.h>
#include <rw_bridge.h>
#include <ATen/DLConvertor.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

using rw_bridge::guarded;

std::vector<at::Tensor> gather(at::Tensor** ts, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; i++) out.push_back(*ts[i]);
  return out;
}

// Operators that make the host wait for an accelerator: reading a scalar back, and the ops
// whose output size depends on the data.
bool is_sync_op(const char* name) {
  static const char* const kNames[] = {
      "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
      "aten::_unique2",            "aten::equal",   "aten::nonzero_static",
  };
  for (const char* k : kNames) {
    if (std::strcmp(name, k) == 0) return true;
  }
  return false;
}

thread_local bool tl_watch = false;
thread_local int64_t tl_syncs = 0;
std::once_flag g_callback_once;

std::unique_ptr<at::ObserverContext> on_op(const at::RecordFunction& fn) {
  if (tl_watch && is_sync_op(fn.name())) tl_syncs++;
  return nullptr;
}

}  // namespace

extern "C" {

void rwa_free_message(char* m) { std::free(m); }

// SGD with momentum, dampening, Nesterov and weight decay in one fused kernel per device and
// dtype. With `first` the momentum buffers are set to the gradient (PyTorch's first step).
int rwa_fused_sgd(at::Tensor** params, at::Tensor** grads, at::Tensor** bufs, int64_t n,
                  double weight_decay, double momentum, double lr, double dampening,
                  int nesterov, int first, char** err) {
  return guarded(err, [&] {
    auto p = gather(params, n);
    auto g = gather(grads, n);
    std::vector<at::Tensor> b;
    if (momentum > 0.0) b = gather(bufs, n);
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, dampening, nesterov != 0, false,
                    first != 0);
  });
}

// Adam (L2 decay folded into the gradient) or AdamW (decoupled decay) in one fused kernel.
// `step` is a float32 scalar tensor on the parameters' device holding the step number (1 on
// the first step), shared by every tensor.
int rwa_fused_adam(at::Tensor** params, at::Tensor** grads, at::Tensor** m, at::Tensor** v,
                   at::Tensor* step, int64_t n, double lr, double beta1, double beta2,
                   double weight_decay, double eps, int decoupled, char** err) {
  return guarded(err, [&] {
    auto p = gather(params, n);
    auto g = gather(grads, n);
    auto m1 = gather(m, n);
    auto m2 = gather(v, n);
    std::vector<at::Tensor> steps(n, *step);
    std::vector<at::Tensor> none;
    if (decoupled != 0) {
      at::_fused_adamw_(p, g, m1, m2, none, steps, lr, beta1, beta2, weight_decay, eps, false,
                        false);
    } else {
      at::_fused_adam_(p, g, m1, m2, none, steps, lr, beta1, beta2, weight_decay, eps, false,
                       false);
    }
  });
}

// Autocast of one device type (0 = CPU, 1 = CUDA) as `torch.autocast` enters it: enabled with
// the given scalar type, nesting counted. The previous state goes to `prev_enabled` and
// `prev_dtype` for `rwa_autocast_exit`.
int rwa_autocast_enter(int device, int dtype, int* prev_enabled, int* prev_dtype, char** err) {
  return guarded(err, [&] {
    auto dt = device == 1 ? at::kCUDA : at::kCPU;
    *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
  });
}

// Leaves an autocast region: restores the previous state and, when the outermost region
// ends, clears the cache of casted weights (as `torch.autocast.__exit__`).
int rwa_autocast_exit(int device, int prev_enabled, int prev_dtype, char** err) {
  return guarded(err, [&] {
    auto dt = device == 1 ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(prev_dtype));
  });
}

int rwa_autocast_enabled(int device) {
  return at::autocast::is_autocast_enabled(device == 1 ? at::kCUDA : at::kCPU) ? 1 : 0;
}

// A copy of `t` in channels-last (NHWC) memory order, or `t` itself when it already is; 4-D
// tensors only (others are returned as they are).
at::Tensor* rwa_channels_last(at::Tensor* t, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] {
    if (t->dim() == 4) {
      out = new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast));
    } else {
      out = new at::Tensor(*t);
    }
  });
  return out;
}

int rwa_is_channels_last(at::Tensor* t) {
  return t->dim() == 4 && t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
}

// Starts counting synchronizing operators run by this thread (the callback is installed once
// per process, on first use) and resets the count.
void rwa_sync_watch_start() {
  std::call_once(g_callback_once, [] {
    at::addGlobalCallback(
        at::RecordFunctionCallback(on_op).needsInputs(false).scopes({at::RecordScope::FUNCTION}));
  });
  tl_syncs = 0;
  tl_watch = true;
}

// Stops counting and returns the number counted since the start.
int64_t rwa_sync_watch_stop() {
  tl_watch = false;
  return tl_syncs;
}

// A DLPack view of `t` (the legacy `DLManagedTensor`, as `torch.utils.dlpack.to_dlpack` makes):
// it shares `t`'s memory and keeps it alive until its deleter runs.
void* rwa_to_dlpack(at::Tensor* t, char** err) {
  void* out = nullptr;
  guarded(err, [&] { out = at::toDLPack(*t); });
  return out;
}

// A tensor over a DLPack tensor's memory. On success the tensor owns `m` and runs its deleter
// when freed; on failure `m` is left to the caller.
at::Tensor* rwa_from_dlpack(void* m, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] { out = new at::Tensor(at::fromDLPack(static_cast<DLManagedTensor*>(m))); });
  return out;
}

// Frees a DLPack tensor nobody consumed.
void rwa_dlpack_release(void* m) {
  auto* d = static_cast<DLManagedTensor*>(m);
  if (d != nullptr && d->deleter != nullptr) d->deleter(d);
}

}  // extern "C"
