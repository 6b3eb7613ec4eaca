// Local response normalization (paper §3.3) over channels-last rows, fused forward and backward.
//
//   b[c] = a[c] * d[c]^(-beta),   d[c] = k + alpha * sum_{j=c-r..c+r, same tower} a[j]^2,   r = (size - 1) / 2
//   da[c] = g[c] d[c]^(-beta) - 2 alpha beta a[c] * sum_{j=c-r..c+r, same tower} g[j] a[j] d[j]^(-beta-1)
//
// A row holds the C channels of one pixel; each tower is a segment of C / towers channels that the
// window never leaves. Float and bfloat16 in and out; all arithmetic in float. With `relu`, the input
// is the pre-activation z and a = max(z, 0) (§3.1): the ReLU costs no pass of its own.
// Any odd size and any beta. The paper's values, what the networks here compute, have paths of their own:
// the window of 5 summed in registers, and beta 3/4 from square roots in place of a pow.
//
// Written once, for every CPU: ATen's Vectorized<float> is AVX-512, AVX2 or NEON by the target that
// kernels.py compiles for. ATen selects it by its CPU_CAPABILITY macros, which PyTorch sets only for its
// own sources, so they are set here from the compiler's target; on ARM64 NEON needs none.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#define VECTOR_ISA "AVX-512"
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#define VECTOR_ISA "AVX2"
#elif defined(__aarch64__)
#define VECTOR_ISA "NEON"
#else
#define VECTOR_ISA "plain C++"
#endif
#include <ATen/cpu/vec/vec.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

using Vec = at::vec::Vectorized<float>;
constexpr int64_t V = Vec::size();

// The vector types of the compilers' own extensions (GCC and Clang), for what at::vec lacks: lane
// shuffles and bfloat16's bits. They compile to each target's instructions as at::vec does.
using Lanes = float __attribute__((vector_size(V * 4)));
using Index = int32_t __attribute__((vector_size(V * 4)));
using Bits = uint32_t __attribute__((vector_size(V * 4)));
using Halves = uint16_t __attribute__((vector_size(V * 2)));
template <typename To, typename From>
static inline To bitcast(const From& v) {
  static_assert(sizeof(To) == sizeof(From));
  To r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

// n <= V values, as float
static inline Vec load(const float* p, int64_t n) { return Vec::loadu(p, n); }
static inline Vec load(const at::BFloat16* p, int64_t n) {
  if (n < V) return std::get<0>(at::vec::convert_bfloat16_float(at::vec::Vectorized<at::BFloat16>::loadu(p, n)));
  Vec v;
  at::vec::load_fp32_from_bf16(p, v);
  return v;
}
template <bool Relu, typename T>
static inline Vec load_a(const T* p, int64_t n) {
  return Relu ? at::vec::clamp_min(load(p, n), Vec(0.0f)) : load(p, n);
}
static inline void store(float* p, const Vec& v, int64_t n) { v.store(p, n); }
// Rounded to nearest even, as c10 does. A NaN here comes from bfloat16 inputs or arithmetic, so the
// rounding cannot carry out of it (c10 checks for the NaNs whose low bits are all set).
static inline void store(at::BFloat16* p, const Vec& v, int64_t n) {
  const Bits b = bitcast<Bits>(v);
  const Halves h = __builtin_convertvector((b + 0x7fff + ((b >> 16) & 1)) >> 16, Halves);
  if (n == V) {  // a copy of constant size: one store
    std::memcpy(p, &h, sizeof h);
  } else {
    uint16_t part[V];
    std::memcpy(part, &h, sizeof h);
    std::memcpy(p, part, n * 2);
  }
}

// Lanes O..O+V-1 of the pair (a, b): one or two shuffle instructions on each target.
template <int64_t O, size_t... I>
static inline Vec shifted(const Vec& a, const Vec& b, std::index_sequence<I...>) {
  const Lanes x = bitcast<Lanes>(a), y = bitcast<Lanes>(b);
#if defined(__clang__) || __GNUC__ >= 12
  return bitcast<Vec>(__builtin_shufflevector(x, y, (I + O)...));
#else
  return bitcast<Vec>(__builtin_shuffle(x, y, Index{static_cast<int32_t>(I + O)...}));
#endif
}
template <int64_t O>
static inline Vec lanes(const Vec& a, const Vec& b) { return shifted<O>(a, b, std::make_index_sequence<V>()); }

// sum over the 5 channels c-2..c+2, from the vectors before, at and after c
static inline Vec window5(const Vec& prev, const Vec& cur, const Vec& next) {
  return (lanes<V - 2>(prev, cur) + lanes<V - 1>(prev, cur)) + (lanes<1>(cur, next) + lanes<2>(cur, next)) + cur;
}

// 1/sqrt(d): the hardware's estimate (14 bits on AVX-512, 12 on AVX2, 8 on NEON), then Newton's steps
// to float's precision, or one fewer for bfloat16 outputs. The only lines written per instruction set:
// at::vec has no estimate, and its exact 1/sqrt (a square root and a division) made the kernel up to 1.3x
// slower on AVX-512.
template <typename T>
static inline Vec rsqrt(const Vec& d) {
#if defined(CPU_CAPABILITY_AVX512)
  Vec r = _mm512_rsqrt14_ps(d);
  constexpr int steps = 1;
#elif defined(CPU_CAPABILITY_AVX2)
  Vec r = _mm256_rsqrt_ps(d);
  constexpr int steps = 2;
#elif defined(__aarch64__)
  Vec r = vrsqrteq_f32(d);
  constexpr int steps = 2;
#else
  Vec r = d.rsqrt();
  constexpr int steps = 1;
#endif
  for (int i = std::is_same_v<T, float> ? 0 : 1; i < steps; ++i)
    r = r * at::vec::fnmadd(d * Vec(0.5f), r * r, Vec(1.5f));
  return r;
}

// The powers of d that the passes need, d^(-beta) and 1/d. Beta 3/4 from rs = rsqrt(d):
// d^(-3/4) = rs^2 rsqrt(rs) and 1/d = rs^2, two estimates and their Newton steps in place of a pow.
template <typename T>
struct ThreeQuarters {
  std::pair<Vec, Vec> operator()(const Vec& d) const {
    const Vec rs = rsqrt<T>(d), inverse = rs * rs;
    return {inverse * rsqrt<T>(rs), inverse};
  }
};
struct AnyBeta {
  Vec minus_beta;
  std::pair<Vec, Vec> operator()(const Vec& d) const { return {d.pow(minus_beta), d.reciprocal()}; }
};

// One segment of L channels, the window of 5 summed in registers. Its arguments are values, not the
// captures of a lambda, so that stores through the output pointer cannot alias them and they stay in registers.
template <bool Relu, typename T, typename Power>
static void forward_segment5(const T* x, T* y, int64_t L, Vec alpha, Vec k, Power power) {
  Vec a = load_a<Relu>(x, std::min(V, L)), prev(0.0f), cur = a * a;
  for (int64_t i = 0; i < L; i += V) {
    const Vec an = i + V < L ? load_a<Relu>(x + i + V, std::min(V, L - i - V)) : Vec(0.0f), next = an * an;
    const Vec p = power(at::vec::fmadd(alpha, window5(prev, cur, next), k)).first;
    store(y + i, a * p, std::min(V, L - i));
    prev = cur, cur = next, a = an;
  }
}

// u = g d^(-beta) and t = u a / d into scratch, aligned, whole vectors (t followed by a zero vector)
template <bool Relu, typename T, typename Power>
static void backward_segment5(const T* x, const T* g, T* gx, int64_t L, Vec alpha, Vec k, Vec scale, Power power,
                              float* u, float* t) {
  Vec a = load_a<Relu>(x, std::min(V, L)), prev(0.0f), cur = a * a;
  for (int64_t i = 0; i < L; i += V) {
    const Vec an = i + V < L ? load_a<Relu>(x + i + V, std::min(V, L - i - V)) : Vec(0.0f), next = an * an;
    const auto [p, inverse] = power(at::vec::fmadd(alpha, window5(prev, cur, next), k));
    const Vec ui = load(g + i, std::min(V, L - i)) * p;
    ui.store(u + i);
    (ui * a * inverse).store(t + i);
    prev = cur, cur = next, a = an;
  }
  prev = Vec(0.0f), cur = Vec::loadu(t);
  for (int64_t i = 0; i < L; i += V) {
    const int64_t n = std::min(V, L - i);
    const Vec next = Vec::loadu(t + i + V), z = load(x + i, n);
    const Vec ga = at::vec::fmadd(scale * z, window5(prev, cur, next), Vec::loadu(u + i));
    store(gx + i, Relu ? Vec::blendv(Vec(0.0f), ga, z > Vec(0.0f)) : ga, n);  // through the ReLU: 0 where z <= 0
    prev = cur, cur = next;
  }
}

// The window of any size 2r + 1: the sum of 2r + 1 unaligned loads from p on, from scratch that holds
// r zeros, a segment's values in whole vectors (zero past its end), then r zeros.
static inline Vec window(const float* p, int64_t r) {
  Vec sum = Vec::loadu(p);
  for (int64_t j = 1; j <= 2 * r; ++j) sum = sum + Vec::loadu(p + j);
  return sum;
}

// the squares a^2 of a segment, after the r zeros of sq
template <bool Relu, typename T>
static void squares(const T* x, int64_t L, int64_t r, float* sq) {
  for (int64_t i = 0; i < L; i += V) {
    const Vec a = load_a<Relu>(x + i, std::min(V, L - i));
    (a * a).store(sq + r + i);
  }
}

template <bool Relu, typename T, typename Power>
static void forward_segment(const T* x, T* y, int64_t L, int64_t r, Vec alpha, Vec k, Power power, float* sq) {
  squares<Relu>(x, L, r, sq);
  for (int64_t i = 0; i < L; i += V) {
    const int64_t n = std::min(V, L - i);
    const Vec p = power(at::vec::fmadd(alpha, window(sq + i, r), k)).first;
    store(y + i, load_a<Relu>(x + i, n) * p, n);
  }
}

// u = g d^(-beta) and t = u a / d into scratch (t after r zeros), then the gradient from them
template <bool Relu, typename T, typename Power>
static void backward_segment(const T* x, const T* g, T* gx, int64_t L, int64_t r, Vec alpha, Vec k, Vec scale,
                             Power power, float* u, float* t, float* sq) {
  squares<Relu>(x, L, r, sq);
  for (int64_t i = 0; i < L; i += V) {
    const int64_t n = std::min(V, L - i);
    const auto [p, inverse] = power(at::vec::fmadd(alpha, window(sq + i, r), k));
    const Vec ui = load(g + i, n) * p;
    ui.store(u + i);
    (ui * load_a<Relu>(x + i, n) * inverse).store(t + r + i);
  }
  for (int64_t i = 0; i < L; i += V) {
    const int64_t n = std::min(V, L - i);
    const Vec z = load(x + i, n), ga = at::vec::fmadd(scale * z, window(t + i, r), Vec::loadu(u + i));
    store(gx + i, Relu ? Vec::blendv(Vec(0.0f), ga, z > Vec(0.0f)) : ga, n);  // through the ReLU: 0 where z <= 0
  }
}

template <bool Relu, typename T, typename Power>
static void forward_rows(const T* x, T* y, int64_t segments, int64_t L, int64_t size, float alpha, float k,
                         Power power) {
  const int64_t r = size / 2, padded = (L + V - 1) / V * V;
  at::parallel_for(0, segments, 256, [=](int64_t begin, int64_t end) {
    if (size == 5) {
      for (int64_t s = begin; s < end; ++s)
        forward_segment5<Relu>(x + s * L, y + s * L, L, Vec(alpha), Vec(k), power);
      return;
    }
    const auto scratch = at::zeros({padded + 2 * r}, at::kFloat);
    for (int64_t s = begin; s < end; ++s)
      forward_segment<Relu>(x + s * L, y + s * L, L, r, Vec(alpha), Vec(k), power, scratch.data_ptr<float>());
  });
}

template <bool Relu, typename T, typename Power>
static void backward_rows(const T* x, const T* g, T* gx, int64_t segments, int64_t L, int64_t size, float alpha,
                          float beta, float k, Power power) {
  const int64_t r = size / 2, padded = (L + V - 1) / V * V;
  at::parallel_for(0, segments, 256, [=](int64_t begin, int64_t end) {
    // u, then t with room for r zeros before and a zero vector and r zeros after, then the squares
    const auto scratch = at::zeros({3 * padded + 4 * r + V}, at::kFloat);
    float *u = scratch.data_ptr<float>(), *t = u + padded, *sq = t + padded + 2 * r + V;
    const Vec scale(-2.0f * alpha * beta);
    for (int64_t s = begin; s < end; ++s) {
      if (size == 5)
        backward_segment5<Relu>(x + s * L, g + s * L, gx + s * L, L, Vec(alpha), Vec(k), scale, power, u, t);
      else
        backward_segment<Relu>(x + s * L, g + s * L, gx + s * L, L, r, Vec(alpha), Vec(k), scale, power, u, t, sq);
    }
  });
}

// run(power) with the power of this beta: 3/4 by square roots, any other by pow
template <typename T, typename Run>
static void with_power(double beta, Run run) {
  if (beta == 0.75)
    run(ThreeQuarters<T>{});
  else
    run(AnyBeta{Vec(static_cast<float>(-beta))});
}

static void check(const torch::Tensor& x, int64_t size, int64_t towers) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "LRN kernel: a contiguous (rows, C) CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "LRN kernel: float32 or bfloat16");
  TORCH_CHECK(size > 0 && size % 2 == 1, "LRN kernel: an odd size");
  TORCH_CHECK(towers > 0 && x.size(1) % towers == 0, "LRN kernel: C a multiple of towers");
}

template <typename T>
static void forward(const torch::Tensor& x, torch::Tensor& y, double alpha, double beta, double k, int64_t size,
                    int64_t towers, bool relu) {
  with_power<T>(beta, [&](auto power) {
    auto rows = relu ? forward_rows<true, T, decltype(power)> : forward_rows<false, T, decltype(power)>;
    rows(x.data_ptr<T>(), y.data_ptr<T>(), x.size(0) * towers, x.size(1) / towers, size, alpha, k, power);
  });
}

template <typename T>
static void backward(const torch::Tensor& x, const torch::Tensor& g, torch::Tensor& gx, double alpha, double beta,
                     double k, int64_t size, int64_t towers, bool relu) {
  with_power<T>(beta, [&](auto power) {
    auto rows = relu ? backward_rows<true, T, decltype(power)> : backward_rows<false, T, decltype(power)>;
    rows(x.data_ptr<T>(), g.data_ptr<T>(), gx.data_ptr<T>(), x.size(0) * towers, x.size(1) / towers, size, alpha,
         beta, k, power);
  });
}

torch::Tensor lrn_forward(torch::Tensor x, double alpha, double beta, double k, int64_t size, int64_t towers,
                          bool relu) {
  check(x, size, towers);
  auto y = torch::empty_like(x);
  if (x.scalar_type() == at::kBFloat16)
    forward<at::BFloat16>(x, y, alpha, beta, k, size, towers, relu);
  else
    forward<float>(x, y, alpha, beta, k, size, towers, relu);
  return y;
}

torch::Tensor lrn_backward(torch::Tensor x, torch::Tensor g, double alpha, double beta, double k, int64_t size,
                           int64_t towers, bool relu) {
  check(x, size, towers);
  TORCH_CHECK(g.sizes() == x.sizes() && g.is_contiguous() && g.scalar_type() == x.scalar_type(), "LRN kernel: gradient");
  auto gx = torch::empty_like(x);
  if (x.scalar_type() == at::kBFloat16)
    backward<at::BFloat16>(x, g, gx, alpha, beta, k, size, towers, relu);
  else
    backward<float>(x, g, gx, alpha, beta, k, size, towers, relu);
  return gx;
}

std::string lrn_vector_isa() { return VECTOR_ISA; }
