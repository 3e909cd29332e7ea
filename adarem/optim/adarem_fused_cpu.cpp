// AdaRem's fused step on the CPU: one pass over memory for every parameter tensor.
//
// Per element it reads p, g, d (and u) and writes p, d (and u): 5 streams (7 with momentum),
// against AdamW's 7. The math is ALGORITHM.md's, in the form the Python docstring names:
//   g     = sign * grad (+ wd_coupled * p when coupled weight decay is on)
//   delta = g + c * d * |g|              (= (1 + lambda^t * sign(g) * d / (s + eps)) * g)
//   u     = momentum * u + delta; delta = u           (only with a momentum buffer)
//   p     = p * keep - lr * delta        (keep = 1 - lr * wd_decoupled)
//   d     = beta * d + (1 - beta) * g
// and the new s = max|d| of each tensor, reduced in the same pass (see abs_bits below).
// Scalars that combine hyperparameters (1 - beta, keep, c) come from double precision.
//
// Work is split into blocks of at most kBlock elements across all tensors, so one
// at::parallel_for (torch's own thread pool) covers the whole step: no parallel region per
// tensor, no Python per tensor. Only fp32 and fp64 tensors, dense, with one layout shared by p,
// grad, d and u, are taken; the op returns the indices of the others, which adarem.py steps with
// its foreach path (for fp16/bf16 that path is the faster one: scalar half conversions would keep
// this loop from vectorizing). Loaded by adarem/optim/adarem.py and called as
// torch.ops.adarem.fused_step_cpu_.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 14;  // elements per work item: 64 KB of fp32 per stream
// columns of the hyperparameter table (adarem.py's _HP)
// (template flags are named kHas..., kCoupled, kDivide: none may shadow these)
enum Column { kLr, kLam, kBeta, kOneMinusBeta, kEps, kWdCoupled, kKeep, kSign, kMomentum, kColumns };

template <typename T> struct Bits;
template <> struct Bits<double> { using type = uint64_t; static constexpr uint64_t mask = 0x7fffffffffffffffull; };
template <> struct Bits<float> { using type = uint32_t; static constexpr uint32_t mask = 0x7fffffffu; };

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

// One block of one tensor. kDivide: b = d / denom per element, for the case where c = lambda^t /
// denom does not fit the type (eps = 0 and a subnormal s); otherwise c * d with c precomputed.
template <typename T, bool kHasMomentum, bool kCoupled, bool kDivide>
typename Bits<T>::type update_block(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ d,
                                    T* __restrict__ u, int64_t n, const double* hp, T c, T lam, T denom) {
  const T lr = static_cast<T>(hp[kLr]);
  const T beta = static_cast<T>(hp[kBeta]);
  const T one_minus_beta = static_cast<T>(hp[kOneMinusBeta]);
  const T wdc = static_cast<T>(hp[kWdCoupled]);
  const T keep = static_cast<T>(hp[kKeep]);
  const T sign = static_cast<T>(hp[kSign]);
  const T mom = static_cast<T>(hp[kMomentum]);
  typename Bits<T>::type m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T pi = p[i];
    // no "+ 0 * p" when weight decay is off: a NaN/inf weight must not reach d through it
    const T g = kCoupled ? sign * grad[i] + wdc * pi : sign * grad[i];
    const T di = d[i];
    T delta;
    if constexpr (kDivide) {
      delta = g + lam * (di / denom) * std::abs(g);
    } else {
      delta = g + c * di * std::abs(g);
    }
    if constexpr (kHasMomentum) {
      delta = mom * u[i] + delta;
      u[i] = delta;
    }
    p[i] = pi * keep - lr * delta;
    const T dn = beta * di + one_minus_beta * g;
    d[i] = dn;
    const auto b = abs_bits(dn);
    m = b > m ? b : m;
  }
  return m;
}

template <typename T, bool kHasMomentum>
typename Bits<T>::type dispatch_block(T* p, const T* g, T* d, T* u, int64_t n, const double* hp, T c,
                                      bool divide, T lam, T denom) {
  const bool coupled = hp[kWdCoupled] != 0;
  if (divide) {
    return coupled ? update_block<T, kHasMomentum, true, true>(p, g, d, u, n, hp, c, lam, denom)
                   : update_block<T, kHasMomentum, false, true>(p, g, d, u, n, hp, c, lam, denom);
  }
  return coupled ? update_block<T, kHasMomentum, true, false>(p, g, d, u, n, hp, c, lam, denom)
                 : update_block<T, kHasMomentum, false, false>(p, g, d, u, n, hp, c, lam, denom);
}

template <typename T>
void step_dtype(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& maxes,
                const std::vector<at::Tensor>& bufs, const std::vector<const double*>& rows) {
  using bits_t = typename Bits<T>::type;
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<T> scale(n), denoms(n);
  std::vector<char> divide(n, 0);
  std::vector<Item> items;
  for (int64_t t = 0; t < n; ++t) {
    const double* hp = rows[t];
    // c = lambda^t / (s + eps) from the s the previous step left, in double. s + eps == 0 in the
    // parameter's precision (d all zero, eps 0 or below that precision) gives c = 0 (b = 0, the
    // rule's limit, as the for-loop path computes it); a NaN s gives NaN, as the rule does.
    const double denom = static_cast<double>(*maxes[t].data_ptr<T>()) + hp[kEps];
    const T denom_t = static_cast<T>(denom);
    const double c = denom_t == 0 ? 0.0 : hp[kLam] / denom;
    denoms[t] = denom_t;
    scale[t] = static_cast<T>(c);
    divide[t] = !std::isnan(c) && !std::isfinite(static_cast<double>(scale[t]));
    const int64_t numel = params[t].numel();
    for (int64_t lo = 0; lo < numel; lo += kBlock) items.push_back({t, lo, std::min(numel, lo + kBlock)});
  }
  std::vector<bits_t> block_max(items.size(), 0);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Item& it = items[k];
      const int64_t t = it.tensor;
      T* p = params[t].data_ptr<T>() + it.begin;
      const T* g = grads[t].data_ptr<T>() + it.begin;
      T* d = exp_avgs[t].data_ptr<T>() + it.begin;
      const int64_t len = it.end - it.begin;
      const T lam = static_cast<T>(rows[t][kLam]);
      if (bufs[t].defined()) {
        T* u = bufs[t].data_ptr<T>() + it.begin;
        block_max[k] = dispatch_block<T, true>(p, g, d, u, len, rows[t], scale[t], divide[t], lam, denoms[t]);
      } else {
        block_max[k] = dispatch_block<T, false>(p, g, d, nullptr, len, rows[t], scale[t], divide[t], lam, denoms[t]);
      }
    }
  });
  std::vector<bits_t> tensor_max(n, 0);
  for (size_t k = 0; k < items.size(); ++k)
    tensor_max[items[k].tensor] = std::max(tensor_max[items[k].tensor], block_max[k]);
  for (int64_t t = 0; t < n; ++t) *maxes[t].data_ptr<T>() = from_bits<T>(tensor_max[t]);
}

bool takes(const at::Tensor& p, const at::Tensor& g, const at::Tensor& d, const at::Tensor& s,
           const c10::optional<at::Tensor>& u) {
  const auto dtype = p.scalar_type();
  if (!p.device().is_cpu() || (dtype != at::kFloat && dtype != at::kDouble)) return false;
  if (!p.is_non_overlapping_and_dense() || p.numel() == 0) return false;
  for (const at::Tensor* t : {&g, &d}) {
    if (!t->device().is_cpu() || t->scalar_type() != dtype || t->sizes() != p.sizes() || t->strides() != p.strides())
      return false;
  }
  if (!s.device().is_cpu() || s.scalar_type() != dtype || s.numel() != 1) return false;
  if (u.has_value() && u->defined() &&
      (!u->device().is_cpu() || u->scalar_type() != dtype || u->sizes() != p.sizes() || u->strides() != p.strides()))
    return false;
  return true;
}

// Steps every tensor it takes (see takes()); returns the indices of the others, untouched.
at::Tensor fused_step_cpu_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList maxes, const c10::List<c10::optional<at::Tensor>>& bufs,
                           const at::Tensor& hp) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && maxes.size() == n && bufs.size() == n,
              "adarem fused_step_cpu_: lists of different lengths");
  TORCH_CHECK(hp.scalar_type() == at::kDouble && hp.is_contiguous() && hp.dim() == 2 &&
                  hp.size(0) == static_cast<int64_t>(n) && hp.size(1) == kColumns,
              "adarem fused_step_cpu_: hp must be a contiguous float64 [n, ", int(kColumns), "] table");
  std::vector<int64_t> rejected;
  struct Lists {
    std::vector<at::Tensor> p, g, d, s, u;
    std::vector<const double*> rows;
  } by_dtype[2];  // 0: float, 1: double
  const double* table = hp.data_ptr<double>();
  for (size_t t = 0; t < n; ++t) {
    const c10::optional<at::Tensor> u = bufs.get(t);
    if (!takes(params[t], grads[t], exp_avgs[t], maxes[t], u)) {
      rejected.push_back(static_cast<int64_t>(t));
      continue;
    }
    Lists& l = by_dtype[params[t].scalar_type() == at::kDouble ? 1 : 0];
    l.p.push_back(params[t]);
    l.g.push_back(grads[t]);
    l.d.push_back(exp_avgs[t]);
    l.s.push_back(maxes[t]);
    l.u.push_back(u.has_value() ? *u : at::Tensor());
    l.rows.push_back(table + t * kColumns);
  }
  if (!by_dtype[0].p.empty())
    step_dtype<float>(by_dtype[0].p, by_dtype[0].g, by_dtype[0].d, by_dtype[0].s, by_dtype[0].u, by_dtype[0].rows);
  if (!by_dtype[1].p.empty())
    step_dtype<double>(by_dtype[1].p, by_dtype[1].g, by_dtype[1].d, by_dtype[1].s, by_dtype[1].u, by_dtype[1].rows);
  at::Tensor out = at::empty({static_cast<int64_t>(rejected.size())}, at::kLong);
  std::copy(rejected.begin(), rejected.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY(adarem, m) {
  m.def("fused_step_cpu_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] maxes, Tensor(d!)?[] bufs, Tensor hp) -> Tensor");
}

TORCH_LIBRARY_IMPL(adarem, CPU, m) { m.impl("fused_step_cpu_", fused_step_cpu_); }
