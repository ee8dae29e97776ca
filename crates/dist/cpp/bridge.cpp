// The bridge from Rust to libtorch's c10d: a TCPStore rendezvous and a Gloo process group, the
// collectives the data-parallel trainer needs, and a synchronized batch norm written as a custom
// autograd function. Every entry point catches C++ exceptions and hands their message to Rust.

#include <ATen/ATen.h>
#include <rw_bridge.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef RW_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include <cstring>
#include <string>

namespace {

using rw_bridge::guarded;

}  // namespace

struct rw_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
};

namespace {

void wait_work(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

void all_reduce_sum(rw_pg* pg, at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  wait_work(pg->backend->allreduce(ts, o));
}

// Reduction over every dimension but the channel one.
std::vector<int64_t> reduce_dims(const at::Tensor& x) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); d++) {
    if (d != 1) dims.push_back(d);
  }
  return dims;
}

std::vector<int64_t> channel_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

// Batch norm over the union of every rank's batch. Forward: each rank's per-channel mean and
// centred sum of squares are gathered and combined (Chan's pairwise formula), so the statistics
// equal those of the whole global batch. Backward: the two per-channel sums the input gradient
// needs are all-reduced; the weight and bias gradients stay local (the trainer all-reduces them
// with every other parameter gradient).
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x,
                            at::Tensor weight, at::Tensor bias, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps,
                            int64_t pg_ptr) {
    auto* pg = reinterpret_cast<rw_pg*>(pg_ptr);
    auto dims = reduce_dims(x);
    auto shape = channel_shape(x);
    const int64_t channels = x.size(1);
    const double n_local = static_cast<double>(x.numel() / std::max<int64_t>(channels, 1));
    auto xd = x.detach().to(at::kDouble);
    auto mean_local = xd.mean(dims);
    auto m2_local = (xd - mean_local.view(shape)).pow(2).sum(dims);
    auto count = at::full({1}, n_local, xd.options());
    auto packed = at::cat({mean_local, m2_local, count});
    std::vector<at::Tensor> gathered;
    for (int r = 0; r < pg->world; r++) gathered.push_back(at::empty_like(packed));
    std::vector<std::vector<at::Tensor>> outs{gathered};
    std::vector<at::Tensor> ins{packed};
    wait_work(pg->backend->allgather(outs, ins));
    auto all = at::stack(outs[0]);                       // [world, 2C+1]
    auto means = all.narrow(1, 0, channels);             // [world, C]
    auto m2s = all.narrow(1, channels, channels);        // [world, C]
    auto counts = all.narrow(1, 2 * channels, 1);        // [world, 1]
    auto n_total = counts.sum();
    auto mean = (means * counts).sum(0) / n_total;
    auto m2 = (m2s + counts * (means - mean).pow(2)).sum(0);
    auto var = m2 / n_total;
    const double n = n_total.item<double>();
    {
      at::NoGradGuard guard;
      if (running_mean.defined()) {
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      }
      if (running_var.defined()) {
        auto unbiased = m2 / std::max(n - 1.0, 1.0);
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.scalar_type()), momentum);
      }
    }
    // As libtorch's own batch norm: y = x * alpha + beta, alpha and beta per channel.
    auto invstd_d = (var + eps).rsqrt();
    auto alpha = weight.defined() ? invstd_d * weight.detach().to(at::kDouble) : invstd_d;
    auto beta = -mean * alpha;
    if (bias.defined()) beta = beta + bias.detach().to(at::kDouble);
    auto invstd = invstd_d.to(x.scalar_type());
    auto mean_f = mean.to(x.scalar_type());
    auto y = x.detach() * alpha.to(x.scalar_type()).view(shape) +
             beta.to(x.scalar_type()).view(shape);
    ctx->save_for_backward({x, weight, mean_f, invstd});
    ctx->saved_data["n"] = n;
    ctx->saved_data["pg"] = pg_ptr;
    ctx->saved_data["has_bias"] = bias.defined();
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto x = saved[0];
    auto weight = saved[1];
    auto mean = saved[2];
    auto invstd = saved[3];
    const double n = ctx->saved_data["n"].toDouble();
    auto* pg = reinterpret_cast<rw_pg*>(ctx->saved_data["pg"].toInt());
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    auto g = grads[0];
    auto dims = reduce_dims(x);
    auto shape = channel_shape(x);
    const int64_t channels = x.size(1);
    auto xmu = x - mean.view(shape);
    // The per-channel sums accumulate in double, as libtorch's batch norm does on the CPU: they
    // nearly cancel, so float accumulation would lose most of their digits.
    auto sum_dy_local = g.sum(dims, false, at::kDouble);
    auto sum_dy_xmu_local = (g * xmu).sum(dims, false, at::kDouble);
    auto packed = at::cat({sum_dy_local, sum_dy_xmu_local});
    all_reduce_sum(pg, packed);
    auto sum_dy = packed.narrow(0, 0, channels);
    auto sum_dy_xmu = packed.narrow(0, channels, channels);
    auto invstd_d = invstd.to(at::kDouble);
    auto scale = weight.defined() ? invstd_d * weight.to(at::kDouble) : invstd_d;
    // grad_x = (g - mean_dy - xmu * invstd^2 * mean_dy_xmu) * invstd * weight
    auto k = (invstd_d * invstd_d * sum_dy_xmu / n).to(x.scalar_type());
    auto mean_dy = (sum_dy / n).to(x.scalar_type());
    auto grad_x = (g - mean_dy.view(shape) - xmu * k.view(shape)) *
                  scale.to(x.scalar_type()).view(shape);
    at::Tensor grad_w;
    if (weight.defined()) grad_w = (sum_dy_xmu_local * invstd_d).to(weight.scalar_type());
    at::Tensor grad_b;
    if (has_bias) grad_b = sum_dy_local.to(x.scalar_type());
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

extern "C" {

int rw_have_gloo() {
#ifdef RW_HAVE_GLOO
  return 1;
#else
  return 0;
#endif
}

rw_pg* rw_pg_new(const char* host, int port, int rank, int world, int64_t timeout_ms,
                 char** err) {
  rw_pg* out = nullptr;
  guarded(err, [&] {
#ifdef RW_HAVE_GLOO
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    out = new rw_pg{store, backend, rank, world};
#else
    (void)host; (void)port; (void)rank; (void)world; (void)timeout_ms;
    throw std::runtime_error(
        "this build has no Gloo: its headers (Debian's libgloo-dev, which scripts/setup.sh "
        "installs) were missing when rustworthy was compiled; install them and rebuild");
#endif
  });
  return out;
}

void rw_pg_free(rw_pg* pg) {
  try {
    delete pg;
  } catch (...) {
  }
}

int rw_pg_all_reduce_sum(rw_pg* pg, at::Tensor* t, char** err) {
  return guarded(err, [&] { all_reduce_sum(pg, *t); });
}

int rw_pg_broadcast(rw_pg* pg, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    wait_work(pg->backend->broadcast(ts, o));
  });
}

// Gathers every rank's `input` into `output` ([world, ...input's shape], contiguous).
int rw_pg_all_gather(rw_pg* pg, at::Tensor* input, at::Tensor* output, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> outs;
    for (int r = 0; r < pg->world; r++) outs.push_back(output->select(0, r));
    std::vector<std::vector<at::Tensor>> outputs{outs};
    std::vector<at::Tensor> inputs{*input};
    wait_work(pg->backend->allgather(outputs, inputs));
  });
}

int rw_pg_barrier(rw_pg* pg, char** err) {
  return guarded(err, [&] { wait_work(pg->backend->barrier(c10d::BarrierOptions())); });
}

at::Tensor* rw_sync_batch_norm(rw_pg* pg, at::Tensor* x, at::Tensor* weight, at::Tensor* bias,
                               at::Tensor* running_mean, at::Tensor* running_var,
                               double momentum, double eps, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] {
    auto opt = [](at::Tensor* t) { return t == nullptr ? at::Tensor() : *t; };
    auto y = SyncBatchNorm::apply(*x, opt(weight), opt(bias), opt(running_mean),
                                  opt(running_var), momentum, eps,
                                  reinterpret_cast<int64_t>(pg));
    out = new at::Tensor(std::move(y));
  });
  return out;
}

}  // extern "C"
