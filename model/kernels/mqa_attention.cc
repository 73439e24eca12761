// Fused multi-query attention for XLA:CPU (float32), forward and backward, as XLA FFI handlers.
//
// Why: XLA:CPU builds attention from separate passes (scores, mask select, max, exp, sum,
// divide, the products, and in the backward pass a transposed copy of the scores for the key
// and value gradients). This kernel does one batch row at a time in blocks of query rows that
// stay in cache, skips key blocks that no query of the block may attend to (half the work under
// a causal mask), and recomputes the probabilities in the backward pass from the saved
// log-sum-exp (FlashAttention's residuals), so nothing of size [B, T, H, S] leaves the cache.
//
// Math (the reference is model.attention.grouped_attention with one K/V head):
//   scores[t,h,s] = q[t,h,:] . k[s,:] (q already scaled), kept where mask[t,s];
//   p = softmax over the kept keys; out[t,h,:] = sum_s p[t,h,s] v[s,:].
// A query with no kept key (padding) attends uniformly to all S keys, as the reference's
// finite -1e30 fill gives; its scores get no gradient (the reference's select zeroes them).
//
// Layout: q [B,T,H,D], k and v [B,S,D], mask [B,T,S] (bool), out [B,T,H,D], lse [B,T,H].
// Row r = t*H + h of a batch row's [T*H, D] queries; work is split over batch rows on XLA's
// intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;  // floats per vector (one AVX-512 register; two AVX2 ones)
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Load(const float* p) { Vec v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }
inline Vec Splat(float x) { return Vec{} + x; }
inline int64_t RoundUp(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// exp(x) for x in [-87, 0], clamped there (Cephes' expf: range reduction by ln 2, degree-5
// polynomial; ~1 ulp). Masked scores may exceed the row's maximum: clamped, then multiplied by 0.
inline Vec Exp(Vec x) {
  x = x < Splat(-87.0f) ? Splat(-87.0f) : x;
  x = x > Splat(0.0f) ? Splat(0.0f) : x;
  Vec n = x * Splat(1.44269504088896341f);
  n = __builtin_convertvector(__builtin_convertvector(n + (n < Splat(0.f) ? Splat(-0.5f) : Splat(0.5f)), IVec), Vec);
  Vec r = x - n * Splat(0.693359375f) + n * Splat(2.12194440e-4f);
  Vec y = Splat(1.9875691500e-4f);
  y = y * r + Splat(1.3981999507e-3f);
  y = y * r + Splat(8.3334519073e-3f);
  y = y * r + Splat(4.1665795894e-2f);
  y = y * r + Splat(1.6666665459e-1f);
  y = y * r + Splat(5.0000001201e-1f);
  y = y * r * r + r + Splat(1.0f);
  IVec bits = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec scale; std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float Sum(Vec v) { float s = 0; for (int i = 0; i < kLanes; ++i) s += v[i]; return s; }
inline float Max(Vec v) { float m = v[0]; for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]); return m; }

// C[i, j] (+)= sum_k A[i*a_i + k*a_k] * B[k*ldb + j] for a tile of MR rows and NV vectors.
template <int MR, int NV>
inline void Tile(int64_t K, const float* A, int64_t a_i, int64_t a_k, const float* B, int64_t ldb,
                 float* C, int64_t ldc, bool accumulate) {
  Vec c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = accumulate ? Load(C + i * ldc + j * kLanes) : Vec{};
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int j = 0; j < NV; ++j) b[j] = Load(B + k * ldb + j * kLanes);
    for (int i = 0; i < MR; ++i) {
      Vec a = Splat(A[i * a_i + k * a_k]);
      for (int j = 0; j < NV; ++j) c[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) Store(C + i * ldc + j * kLanes, c[i][j]);
}

template <int MR>
inline void RowTile(int64_t N, int64_t K, const float* A, int64_t a_i, int64_t a_k, const float* B,
                    int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 4 * kLanes <= N; j += 4 * kLanes) Tile<MR, 4>(K, A, a_i, a_k, B + j, ldb, C + j, ldc, accumulate);
  switch ((N - j) / kLanes) {
    case 3: Tile<MR, 3>(K, A, a_i, a_k, B + j, ldb, C + j, ldc, accumulate); break;
    case 2: Tile<MR, 2>(K, A, a_i, a_k, B + j, ldb, C + j, ldc, accumulate); break;
    case 1: Tile<MR, 1>(K, A, a_i, a_k, B + j, ldb, C + j, ldc, accumulate); break;
    default: break;
  }
}

// C[M, N] (+)= A[M, K] B[K, N]; A strided (a_i, a_k), B and C row-major, N a multiple of kLanes.
void Gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_i, int64_t a_k, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) RowTile<4>(N, K, A + i * a_i, a_i, a_k, B, ldb, C + i * ldc, ldc, accumulate);
  for (; i < M; ++i) RowTile<1>(N, K, A + i * a_i, a_i, a_k, B, ldb, C + i * ldc, ldc, accumulate);
}

// Runs body(b) for b in [0, n) on the caller and XLA's pool. Helpers claim items from a shared
// counter and the caller waits only for claimed items, so a helper that starts late (its
// thread busy elsewhere) finds nothing left and never touches `body` after the call returned.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& body) {
  struct Counters { std::atomic<int64_t> next{0}, done{0}; };
  auto counters = std::make_shared<Counters>();
  auto work = [counters, n, &body] {
    for (int64_t i; (i = counters->next.fetch_add(1)) < n;) {
      body(i);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (counters->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

struct Shape {
  int64_t B, T, H, S, D, Sp, Dp, rows_per_block;
};

// The shape of q [B,T,H,D], k/v [B,S,D], mask [B,T,S] into `s`, or the error if they disagree.
ffi::Error ShapeOf(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, const ffi::Buffer<ffi::F32>& v,
                   const ffi::Buffer<ffi::PRED>& mask, Shape& s) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 4 || kd.size() != 3 || vd.size() != 3 || md.size() != 3 || kd[0] != qd[0] ||
      kd[2] != qd[3] || vd[0] != qd[0] || vd[1] != kd[1] || vd[2] != qd[3] || md[0] != qd[0] ||
      md[1] != qd[1] || md[2] != kd[1])
    return ffi::Error::InvalidArgument("mqa_attention: expected q [B,T,H,D], k/v [B,S,D], mask [B,T,S]");
  s = Shape{qd[0], qd[1], qd[2], kd[1], qd[3], RoundUp(kd[1]), RoundUp(qd[3]),
            std::max<int64_t>(1, 64 / qd[2])};  // queries per block: ~64 rows of scores
  return ffi::Error::Success();
}

// Per batch row: the mask as 0/1 floats padded to Sp keys, and each query's kept-key range.
struct RowMask {
  std::vector<float> keep;              // [T, Sp]
  std::vector<int64_t> first, last;    // kept keys of query t lie in [first[t], last[t])
  void Build(const bool* mask, const Shape& s) {
    keep.assign(s.T * s.Sp, 0.f);
    first.assign(s.T, s.S);
    last.assign(s.T, 0);
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t j = 0; j < s.S; ++j)
        if (mask[t * s.S + j]) {
          keep[t * s.Sp + j] = 1.f;
          first[t] = std::min(first[t], j);
          last[t] = j + 1;
        }
  }
  bool Empty(int64_t t) const { return last[t] == 0; }
  // Columns [lo, hi) (multiples of kLanes) covering the kept keys of queries [t0, t1).
  std::pair<int64_t, int64_t> Columns(int64_t t0, int64_t t1) const {
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
    for (int64_t t = t0; t < t1; ++t)
      if (!Empty(t)) { lo = std::min(lo, first[t]); hi = std::max(hi, last[t]); }
    if (hi == 0) return {0, 0};
    return {lo / kLanes * kLanes, RoundUp(hi)};
  }
};

// x [S, D] -> its transpose [D, Sp], zeros beyond S (the right operand of q . k^T, dO . v^T).
void Transposed(const float* x, const Shape& s, std::vector<float>& out) {
  out.assign(s.D * s.Sp, 0.f);
  for (int64_t j = 0; j < s.S; ++j)
    for (int64_t d = 0; d < s.D; ++d) out[d * s.Sp + j] = x[j * s.D + d];
}

// x [S, D] -> [Sp, Dp], zeros beyond S and D (the right operand of P . v, dS . k).
void Padded(const float* x, const Shape& s, std::vector<float>& out) {
  out.assign(s.Sp * s.Dp, 0.f);
  for (int64_t j = 0; j < s.S; ++j) std::memcpy(out.data() + j * s.Dp, x + j * s.D, s.D * sizeof(float));
}

struct Scratch {
  RowMask mask;
  std::vector<float> kt, kp, vt, vp, scores, grads, rows, dkt, dvt;
};

// Probabilities of rows [r0, r0 + n) (one block of queries) over the block's columns from lo,
// in place, 0 where not kept. Forward (lse_in == nullptr): softmax over the kept keys, each
// row's log-sum-exp written to lse_out. Backward: exp(score - lse_in), the forward's values.
void Softmax(float* scores, int64_t n, int64_t width, int64_t lo, int64_t r0, const Shape& s,
             const RowMask& mask, float* lse_out, const float* lse_in) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t t = (r0 + i) / s.H;
    float* row = scores + i * width;
    const float* keep = mask.keep.data() + t * s.Sp + lo;
    if (mask.Empty(t)) {  // padding query: handled apart (uniform over all keys, no gradient)
      std::fill(row, row + width, 0.f);
      if (lse_out) lse_out[r0 + i] = std::numeric_limits<float>::infinity();
      continue;
    }
    float m;
    if (lse_in) {
      m = lse_in[r0 + i];
    } else {
      Vec mv = Splat(-std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < width; j += kLanes) {
        Vec x = Load(row + j);
        mv = Load(keep + j) > Splat(0.f) ? (x > mv ? x : mv) : mv;
      }
      m = Max(mv);
    }
    Vec total{};
    for (int64_t j = 0; j < width; j += kLanes) {
      Vec p = Exp(Load(row + j) - Splat(m)) * Load(keep + j);
      Store(row + j, p);
      total += p;
    }
    if (!lse_in) {
      float l = Sum(total);
      Vec inv = Splat(1.f / l);
      for (int64_t j = 0; j < width; j += kLanes) Store(row + j, Load(row + j) * inv);
      lse_out[r0 + i] = m + std::log(l);
    }
  }
}

void ForwardRow(int64_t b, const Shape& s, const float* q, const float* k, const float* v,
                const bool* mask, float* out, float* lse, Scratch& w) {
  const int64_t R = s.T * s.H;
  q += b * R * s.D; k += b * s.S * s.D; v += b * s.S * s.D; mask += b * s.T * s.S;
  out += b * R * s.D; lse += b * R;
  w.mask.Build(mask, s);
  Transposed(k, s, w.kt);
  Padded(v, s, w.vp);
  w.scores.resize(s.rows_per_block * s.H * s.Sp);
  w.rows.resize(s.rows_per_block * s.H * s.Dp);
  std::vector<float> mean_v(s.D, 0.f);
  for (int64_t j = 0; j < s.S; ++j)
    for (int64_t d = 0; d < s.D; ++d) mean_v[d] += v[j * s.D + d] / s.S;
  for (int64_t t0 = 0; t0 < s.T; t0 += s.rows_per_block) {
    int64_t t1 = std::min(s.T, t0 + s.rows_per_block), r0 = t0 * s.H, n = (t1 - t0) * s.H;
    auto [lo, hi] = w.mask.Columns(t0, t1);
    int64_t width = hi - lo;
    if (width > 0) {
      Gemm(n, width, s.D, q + r0 * s.D, s.D, 1, w.kt.data() + lo, s.Sp, w.scores.data(), width, false);
      Softmax(w.scores.data(), n, width, lo, r0, s, w.mask, lse, nullptr);
      Gemm(n, s.Dp, width, w.scores.data(), width, 1, w.vp.data() + lo * s.Dp, s.Dp, w.rows.data(), s.Dp, false);
    }
    for (int64_t i = 0; i < n; ++i) {
      int64_t t = (r0 + i) / s.H;
      const float* src = w.mask.Empty(t) ? mean_v.data() : w.rows.data() + i * s.Dp;
      if (w.mask.Empty(t)) lse[r0 + i] = std::numeric_limits<float>::infinity();
      std::memcpy(out + (r0 + i) * s.D, src, s.D * sizeof(float));
    }
  }
}

void BackwardRow(int64_t b, const Shape& s, const float* q, const float* k, const float* v,
                 const bool* mask, const float* out, const float* lse, const float* dout,
                 float* dq, float* dk, float* dv, Scratch& w) {
  const int64_t R = s.T * s.H;
  q += b * R * s.D; k += b * s.S * s.D; v += b * s.S * s.D; mask += b * s.T * s.S;
  out += b * R * s.D; lse += b * R; dout += b * R * s.D;
  dq += b * R * s.D; dk += b * s.S * s.D; dv += b * s.S * s.D;
  w.mask.Build(mask, s);
  Transposed(k, s, w.kt);
  Padded(k, s, w.kp);
  Transposed(v, s, w.vt);
  w.scores.resize(s.rows_per_block * s.H * s.Sp);
  w.grads.resize(s.rows_per_block * s.H * s.Sp);
  w.rows.resize(s.rows_per_block * s.H * s.Dp);
  w.dkt.assign(s.D * s.Sp, 0.f);
  w.dvt.assign(s.D * s.Sp, 0.f);
  std::vector<float> padding_dout(s.D, 0.f);  // sum of dout over padding queries (uniform p)
  for (int64_t t0 = 0; t0 < s.T; t0 += s.rows_per_block) {
    int64_t t1 = std::min(s.T, t0 + s.rows_per_block), r0 = t0 * s.H, n = (t1 - t0) * s.H;
    auto [lo, hi] = w.mask.Columns(t0, t1);
    int64_t width = hi - lo;
    if (width > 0) {
      float* p = w.scores.data();
      float* g = w.grads.data();
      Gemm(n, width, s.D, q + r0 * s.D, s.D, 1, w.kt.data() + lo, s.Sp, p, width, false);
      Softmax(p, n, width, lo, r0, s, w.mask, nullptr, lse);
      Gemm(n, width, s.D, dout + r0 * s.D, s.D, 1, w.vt.data() + lo, s.Sp, g, width, false);  // dP
      for (int64_t i = 0; i < n; ++i) {  // dS = P * (dP - rowsum(dO * O))
        const float* o = out + (r0 + i) * s.D;
        const float* d_o = dout + (r0 + i) * s.D;
        float delta = 0.f;
        for (int64_t d = 0; d < s.D; ++d) delta += d_o[d] * o[d];
        Vec dv_ = Splat(delta);
        for (int64_t j = 0; j < width; j += kLanes)
          Store(g + i * width + j, Load(p + i * width + j) * (Load(g + i * width + j) - dv_));
      }
      Gemm(n, s.Dp, width, g, width, 1, w.kp.data() + lo * s.Dp, s.Dp, w.rows.data(), s.Dp, false);  // dQ
      Gemm(s.D, width, n, q + r0 * s.D, 1, s.D, g, width, w.dkt.data() + lo, s.Sp, true);  // dK^T
      Gemm(s.D, width, n, dout + r0 * s.D, 1, s.D, p, width, w.dvt.data() + lo, s.Sp, true);  // dV^T
    }
    for (int64_t i = 0; i < n; ++i) {
      int64_t t = (r0 + i) / s.H;
      float* dst = dq + (r0 + i) * s.D;
      if (w.mask.Empty(t)) {
        std::fill(dst, dst + s.D, 0.f);
        for (int64_t d = 0; d < s.D; ++d) padding_dout[d] += dout[(r0 + i) * s.D + d];
      } else {
        std::memcpy(dst, w.rows.data() + i * s.Dp, s.D * sizeof(float));
      }
    }
  }
  for (int64_t j = 0; j < s.S; ++j)
    for (int64_t d = 0; d < s.D; ++d) {
      dk[j * s.D + d] = w.dkt[d * s.Sp + j];
      dv[j * s.D + d] = w.dvt[d * s.Sp + j] + padding_dout[d] / s.S;
    }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                       ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  Shape s;
  if (auto error = ShapeOf(q, k, v, mask, s); error.failure()) return error;
  ParallelFor(pool, s.B, [&](int64_t b) {
    thread_local Scratch scratch;
    ForwardRow(b, s, q.typed_data(), k.typed_data(), v.typed_data(), mask.typed_data(),
               out->typed_data(), lse->typed_data(), scratch);
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out,
                        ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                        ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv) {
  Shape s;
  if (auto error = ShapeOf(q, k, v, mask, s); error.failure()) return error;
  ParallelFor(pool, s.B, [&](int64_t b) {
    thread_local Scratch scratch;
    BackwardRow(b, s, q.typed_data(), k.typed_data(), v.typed_data(), mask.typed_data(), out.typed_data(),
                lse.typed_data(), dout.typed_data(), dq->typed_data(), dk->typed_data(), dv->typed_data(),
                scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MqaAttentionForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MqaAttentionBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
