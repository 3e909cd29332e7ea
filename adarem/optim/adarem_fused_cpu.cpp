// AdaRem's fused step on the CPU: one pass over memory for every parameter tensor.
//
// Per element it reads p, g, d (and u) and writes p, d (and u): 5 streams (7 with momentum),
// against AdamW's 7. The math is ALGORITHM.md's, in the form the Python docstring names:
//   g     = sign * grad + wd_coupled * p
//   delta = g + c * d * |g|              (= (1 + lambda^t * sign(g) * d / (s + eps)) * g)
//   u     = momentum * u + delta; delta = u           (only with a momentum buffer)
//   p     = p * (1 - lr * wd_decoupled) - lr * delta
//   d     = d + (1 - beta) * (g - d)
// and the new s = max|d| of each tensor, reduced in the same pass (see abs_bits below).
//
// Work is split into blocks of at most kBlock elements across all tensors, so one
// at::parallel_for (torch's own thread pool) covers the whole step: no parallel region per
// tensor, no Python per tensor. Loaded by adarem/optim/adarem.py through
// torch.utils.cpp_extension and called as torch.ops.adarem.fused_step_cpu_.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 14;  // elements per work item: 64 KB of fp32 per stream
constexpr int kColumns = 8;          // lr, lam, beta, eps, wd_coupled, wd_decoupled, sign, momentum

// The unsigned integer of a floating type's width.
template <typename T> struct Bits;
template <> struct Bits<double> { using type = uint64_t; static constexpr uint64_t mask = 0x7fffffffffffffffull; };
template <> struct Bits<float> { using type = uint32_t; static constexpr uint32_t mask = 0x7fffffffu; };
template <> struct Bits<c10::Half> { using type = uint16_t; static constexpr uint16_t mask = 0x7fffu; };
template <> struct Bits<c10::BFloat16> { using type = uint16_t; static constexpr uint16_t mask = 0x7fffu; };

// |x| as the bit pattern of an IEEE float with the sign bit cleared. These integers are ordered
// as the magnitudes are, and every NaN is above +inf, so an integer max is max|d| exactly and
// propagates NaN like torch's amax, and it vectorizes where a float max with NaN rules does not.
template <typename T>
inline typename Bits<T>::type abs_bits(T x) {
  typename Bits<T>::type b;
  std::memcpy(&b, &x, sizeof(T));
  return b & Bits<T>::mask;
}

template <typename T>
inline T from_bits(typename Bits<T>::type b) {
  T x;
  std::memcpy(&x, &b, sizeof(T));
  return x;
}

struct Item {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// One block of one tensor. acc_t is the compute type: fp32 for fp32/fp16/bf16, fp64 for fp64
// (never below the parameter's precision).
template <typename scalar_t, typename acc_t, bool kMomentum>
typename Bits<scalar_t>::type update_block(scalar_t* __restrict__ p, const scalar_t* __restrict__ grad,
                                           scalar_t* __restrict__ d, scalar_t* __restrict__ u,
                                           int64_t n, const double* hp, acc_t c) {
  const acc_t lr = static_cast<acc_t>(hp[0]);
  const acc_t one_minus_beta = 1 - static_cast<acc_t>(hp[2]);
  const acc_t wdc = static_cast<acc_t>(hp[4]);
  const acc_t keep = 1 - lr * static_cast<acc_t>(hp[5]);
  const acc_t sign = static_cast<acc_t>(hp[6]);
  const acc_t mom = static_cast<acc_t>(hp[7]);
  typename Bits<scalar_t>::type m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t pi = static_cast<acc_t>(p[i]);
    // no "+ 0 * p" when weight decay is off: a NaN/inf weight must not reach d through it
    const acc_t g = wdc != 0 ? sign * static_cast<acc_t>(grad[i]) + wdc * pi
                             : sign * static_cast<acc_t>(grad[i]);
    const acc_t di = static_cast<acc_t>(d[i]);
    acc_t delta = g + c * di * std::abs(g);
    if constexpr (kMomentum) {
      const scalar_t ui = static_cast<scalar_t>(mom * static_cast<acc_t>(u[i]) + delta);
      u[i] = ui;
      delta = static_cast<acc_t>(ui);  // the stored buffer, as the other paths use it
    }
    p[i] = static_cast<scalar_t>(pi * keep - lr * delta);
    const scalar_t dn = static_cast<scalar_t>(di + one_minus_beta * (g - di));
    d[i] = dn;
    const auto b = abs_bits(dn);
    m = b > m ? b : m;
  }
  return m;
}

template <typename scalar_t>
void step_dtype(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& maxes,
                const std::vector<c10::optional<at::Tensor>>& bufs, const double* table) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using bits_t = typename Bits<scalar_t>::type;
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<acc_t> scale(n);
  std::vector<Item> items;
  for (int64_t t = 0; t < n; ++t) {
    const double* hp = table + t * kColumns;
    // c = lambda^t / (s + eps) from the s the previous step left; 0 where s + eps is not > 0.
    const acc_t s = static_cast<acc_t>(*maxes[t].data_ptr<scalar_t>());
    const acc_t denom = s + static_cast<acc_t>(hp[3]);
    scale[t] = denom > 0 ? static_cast<acc_t>(hp[1]) / denom : acc_t(0);
    const int64_t numel = params[t].numel();
    for (int64_t lo = 0; lo < numel; lo += kBlock) items.push_back({t, lo, std::min(numel, lo + kBlock)});
  }
  std::vector<bits_t> block_max(items.size(), 0);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Item& it = items[k];
      const int64_t t = it.tensor;
      scalar_t* p = params[t].data_ptr<scalar_t>() + it.begin;
      const scalar_t* g = grads[t].data_ptr<scalar_t>() + it.begin;
      scalar_t* d = exp_avgs[t].data_ptr<scalar_t>() + it.begin;
      const int64_t len = it.end - it.begin;
      const double* hp = table + t * kColumns;
      if (bufs[t].has_value() && bufs[t]->defined()) {
        scalar_t* u = bufs[t]->data_ptr<scalar_t>() + it.begin;
        block_max[k] = update_block<scalar_t, acc_t, true>(p, g, d, u, len, hp, scale[t]);
      } else {
        block_max[k] = update_block<scalar_t, acc_t, false>(p, g, d, nullptr, len, hp, scale[t]);
      }
    }
  });
  std::vector<bits_t> tensor_max(n, 0);
  for (size_t k = 0; k < items.size(); ++k)
    tensor_max[items[k].tensor] = std::max(tensor_max[items[k].tensor], block_max[k]);
  for (int64_t t = 0; t < n; ++t) *maxes[t].data_ptr<scalar_t>() = from_bits<scalar_t>(tensor_max[t]);
}

// Every tensor of one call has one dtype; p, grad, d (and u) of a tensor share one dense layout
// (adarem.py checks both and sends anything else to another path), so each is a flat array.
void fused_step_cpu_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList maxes, const c10::List<c10::optional<at::Tensor>>& bufs,
                     const at::Tensor& hp) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && maxes.size() == n && bufs.size() == n,
              "adarem fused_step_cpu_: lists of different lengths");
  TORCH_CHECK(hp.scalar_type() == at::kDouble && hp.is_contiguous() && hp.dim() == 2 &&
                  hp.size(0) == static_cast<int64_t>(n) && hp.size(1) == kColumns,
              "adarem fused_step_cpu_: hp must be a contiguous float64 [n, 8] table");
  if (n == 0) return;
  std::vector<at::Tensor> p(params.begin(), params.end()), g(grads.begin(), grads.end()),
      d(exp_avgs.begin(), exp_avgs.end()), s(maxes.begin(), maxes.end());
  std::vector<c10::optional<at::Tensor>> u;
  u.reserve(n);
  for (const c10::optional<at::Tensor>& b : bufs) u.push_back(b);
  const auto dtype = p[0].scalar_type();
  for (size_t t = 0; t < n; ++t) {
    TORCH_CHECK(p[t].device().is_cpu() && p[t].scalar_type() == dtype && g[t].scalar_type() == dtype &&
                    d[t].scalar_type() == dtype && s[t].scalar_type() == dtype && s[t].numel() == 1,
                "adarem fused_step_cpu_: tensor ", t, " has another device or dtype");
    TORCH_CHECK(g[t].strides() == p[t].strides() && d[t].strides() == p[t].strides() &&
                    p[t].is_non_overlapping_and_dense() && g[t].numel() == p[t].numel() &&
                    d[t].numel() == p[t].numel(),
                "adarem fused_step_cpu_: tensor ", t, " is not dense with one layout for p, grad, d");
    if (u[t].has_value() && u[t]->defined())
      TORCH_CHECK(u[t]->scalar_type() == dtype && u[t]->strides() == p[t].strides(),
                  "adarem fused_step_cpu_: momentum buffer ", t, " differs from its parameter");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "adarem_fused_step_cpu", [&] {
    step_dtype<scalar_t>(p, g, d, s, u, hp.data_ptr<double>());
  });
}

}  // namespace

TORCH_LIBRARY(adarem, m) {
  m.def("fused_step_cpu_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] maxes, Tensor?[] bufs, Tensor hp) -> ()");
}

TORCH_LIBRARY_IMPL(adarem, CPU, m) { m.impl("fused_step_cpu_", fused_step_cpu_); }
