// Local response normalization (paper §3.3) over channels-last rows, fused forward and backward, AVX-512.
//
//   b[c] = a[c] * d[c]^(-3/4),   d[c] = k + alpha * sum_{j=c-2..c+2, same tower} a[j]^2
//   da[c] = g[c] d[c]^(-3/4) - 2 alpha beta a[c] * sum_{j=c-2..c+2, same tower} g[j] a[j] d[j]^(-7/4)
//
// A row holds the C channels of one pixel; each tower is a segment of C / towers channels (a multiple
// of 16) that the window never leaves. Float and bfloat16 in and out; all arithmetic in float.
// With `relu`, the input is the pre-activation z and a = max(z, 0) (§3.1): the ReLU costs no pass of
// its own, forward or backward.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#ifdef __AVX512F__  // compiled for the machine it runs on; elsewhere the plain PyTorch formula runs
#include <immintrin.h>

#include <type_traits>

constexpr int64_t kMaxTower = 1024;  // channels per tower

static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const at::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <bool Relu, typename T>
static inline __m512 load_a(const T* p) {
  return Relu ? _mm512_max_ps(load16(p), _mm512_setzero_ps()) : load16(p);
}
// Outputs are written with streaming stores: they are far larger than the caches, and bypassing them
// saves reading each line before writing it. Tower segments are 64-byte (float) or 32-byte (bfloat16)
// aligned, as the stores need, because PyTorch aligns allocations to 64 bytes.
static inline void store16(float* p, __m512 v) { _mm512_stream_ps(p, v); }
static inline void store16(at::BFloat16* p, __m512 v) {
#ifdef __AVX512BF16__
  __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
#else  // round to nearest even
  __m512i b = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  b = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16));
#endif
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
}
// d^(-1/2): the 14-bit estimate is enough for bfloat16 outputs; one Newton step makes it float-exact.
template <typename T>
static inline __m512 rsqrt(__m512 d) {
  __m512 r = _mm512_rsqrt14_ps(d);
  if (std::is_same_v<T, at::BFloat16>) return r;
  __m512 half_d = _mm512_mul_ps(d, _mm512_set1_ps(0.5f));
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(half_d, _mm512_mul_ps(r, r), _mm512_set1_ps(1.5f)));
}
// sum over the 5 channels c-2..c+2, from the chunks before, at and after c
static inline __m512 window5(__m512 prev, __m512 cur, __m512 next) {
  __m512i p = _mm512_castps_si512(prev), c = _mm512_castps_si512(cur), n = _mm512_castps_si512(next);
  __m512 a = _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, 14));
  __m512 b = _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, 15));
  __m512 d = _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 1));
  __m512 e = _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 2));
  return _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(d, e)), cur);
}

template <bool Relu, typename T>
static void forward_rows(const T* x, T* y, int64_t rows, int64_t C, float alpha, float k, int64_t towers) {
  const int64_t L = C / towers, nc = L / 16;
  const __m512 va = _mm512_set1_ps(alpha), vk = _mm512_set1_ps(k), zero = _mm512_setzero_ps();
  at::parallel_for(0, rows * towers, 256, [&](int64_t begin, int64_t end) {
    for (int64_t seg = begin; seg < end; ++seg) {
      const T* xs = x + seg * L;
      T* ys = y + seg * L;
      __m512 xc = load_a<Relu>(xs), prev = zero, cur = _mm512_mul_ps(xc, xc);
      for (int64_t i = 0; i < nc; ++i) {
        __m512 xn = i + 1 < nc ? load_a<Relu>(xs + 16 * (i + 1)) : zero;
        __m512 next = _mm512_mul_ps(xn, xn);
        __m512 rs = rsqrt<T>(_mm512_fmadd_ps(va, window5(prev, cur, next), vk));
        __m512 p = _mm512_mul_ps(_mm512_mul_ps(rs, rs), rsqrt<T>(rs));  // d^(-3/4)
        store16(ys + 16 * i, _mm512_mul_ps(xc, p));
        prev = cur; cur = next; xc = xn;
      }
    }
    _mm_sfence();
  });
}

template <bool Relu, typename T>
static void backward_rows(const T* x, const T* g, T* gx, int64_t rows, int64_t C, float alpha, float beta, float k,
                          int64_t towers) {
  const int64_t L = C / towers, nc = L / 16;
  const __m512 va = _mm512_set1_ps(alpha), vk = _mm512_set1_ps(k), zero = _mm512_setzero_ps();
  const __m512 vsc = _mm512_set1_ps(-2.0f * alpha * beta);
  at::parallel_for(0, rows * towers, 256, [&](int64_t begin, int64_t end) {
    alignas(64) float pb[kMaxTower], tb[kMaxTower + 16];
    for (int64_t seg = begin; seg < end; ++seg) {
      const T* xs = x + seg * L;
      const T* gs = g + seg * L;
      T* os = gx + seg * L;
      __m512 xc = load_a<Relu>(xs), prev = zero, cur = _mm512_mul_ps(xc, xc);
      for (int64_t i = 0; i < nc; ++i) {
        __m512 xn = i + 1 < nc ? load_a<Relu>(xs + 16 * (i + 1)) : zero;
        __m512 next = _mm512_mul_ps(xn, xn);
        __m512 rs = rsqrt<T>(_mm512_fmadd_ps(va, window5(prev, cur, next), vk));
        __m512 p = _mm512_mul_ps(_mm512_mul_ps(rs, rs), rsqrt<T>(rs));  // d^(-3/4)
        _mm512_store_ps(pb + 16 * i, p);
        // g x p / d, with 1/d = rs^2
        __m512 gxp = _mm512_mul_ps(_mm512_mul_ps(load16(gs + 16 * i), xc), p);
        _mm512_store_ps(tb + 16 * i, _mm512_mul_ps(gxp, _mm512_mul_ps(rs, rs)));
        prev = cur; cur = next; xc = xn;
      }
      _mm512_store_ps(tb + 16 * nc, zero);
      prev = zero; cur = _mm512_load_ps(tb);
      for (int64_t i = 0; i < nc; ++i) {
        __m512 next = _mm512_load_ps(tb + 16 * (i + 1));
        __m512 w = window5(prev, cur, next);
        __m512 z = load16(xs + 16 * i);
        __m512 gp = _mm512_mul_ps(load16(gs + 16 * i), _mm512_load_ps(pb + 16 * i));
        __m512 ga = _mm512_fmadd_ps(_mm512_mul_ps(vsc, z), w, gp);
        // through the ReLU: zero where z <= 0
        store16(os + 16 * i, Relu ? _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ), ga) : ga);
        prev = cur; cur = next;
      }
    }
    _mm_sfence();
  });
}

static void check(const torch::Tensor& x, int64_t towers) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "LRN kernel: a contiguous (rows, C) CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "LRN kernel: float32 or bfloat16");
  const int64_t L = x.size(1) / towers;
  TORCH_CHECK(L * towers == x.size(1) && L % 16 == 0 && L <= kMaxTower, "LRN kernel: C / towers a multiple of 16");
}

template <bool Relu, typename T>
static void forward(const torch::Tensor& x, torch::Tensor& y, double alpha, double k, int64_t towers) {
  forward_rows<Relu>(x.data_ptr<T>(), y.data_ptr<T>(), x.size(0), x.size(1), alpha, k, towers);
}

template <bool Relu, typename T>
static void backward(const torch::Tensor& x, const torch::Tensor& g, torch::Tensor& gx, double alpha, double beta,
                     double k, int64_t towers) {
  backward_rows<Relu>(x.data_ptr<T>(), g.data_ptr<T>(), gx.data_ptr<T>(), x.size(0), x.size(1), alpha, beta, k,
                      towers);
}

torch::Tensor lrn_forward(torch::Tensor x, double alpha, double k, int64_t towers, bool relu) {
  check(x, towers);
  auto y = torch::empty_like(x);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (relu)
    bf16 ? forward<true, at::BFloat16>(x, y, alpha, k, towers) : forward<true, float>(x, y, alpha, k, towers);
  else
    bf16 ? forward<false, at::BFloat16>(x, y, alpha, k, towers) : forward<false, float>(x, y, alpha, k, towers);
  return y;
}

torch::Tensor lrn_backward(torch::Tensor x, torch::Tensor g, double alpha, double beta, double k, int64_t towers,
                           bool relu) {
  check(x, towers);
  TORCH_CHECK(g.sizes() == x.sizes() && g.is_contiguous() && g.scalar_type() == x.scalar_type(), "LRN kernel: gradient");
  auto gx = torch::empty_like(x);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (relu)
    bf16 ? backward<true, at::BFloat16>(x, g, gx, alpha, beta, k, towers)
         : backward<true, float>(x, g, gx, alpha, beta, k, towers);
  else
    bf16 ? backward<false, at::BFloat16>(x, g, gx, alpha, beta, k, towers)
         : backward<false, float>(x, g, gx, alpha, beta, k, towers);
  return gx;
}

#endif  // __AVX512F__
