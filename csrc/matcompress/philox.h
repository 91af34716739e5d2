// Counter-based Gaussian numbers: Philox4x32-10 (J. K. Salmon, M. A. Moraes, R. O. Dror and
// D. E. Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC11, 2011) and a Box-Muller
// transform whose logarithm, sine and cosine are computed here from +, -, *, / and sqrt only, so
// the bits of every number are fixed by this header, not by a libm, an instruction set or a
// thread count. Header-only, no dependencies: for the numpy face and, later, the TensorFlow op.
//
// The Gaussian stream of a 64-bit `seed`, element e (e = 0, 1, 2, ...), is defined as:
//   key      = (k0, k1) = (seed mod 2^32, seed >> 32)
//   block    b = e / 4 (integer division), lane l = e mod 4
//   counter  = (c0, c1, c2, c3) = (b mod 2^32, b >> 32, 0, 0)   (a 128-bit counter, c0 lowest)
//   (x0, x1, x2, x3) = Philox4x32-10(counter, key)               (Random123's word order)
//   (z0, z1) = box_muller(x0, x1), (z2, z3) = box_muller(x2, x3)
//   element e = z_l
// where box_muller(a, b), with u = (a + 1) / 2^32 and v = (b + 1) / 2^32, both in (0, 1], gives
//   rho = sqrt(-2 ln u), theta = 2 pi v, (rho cos theta, rho sin theta)
// evaluated in double precision by neg_log_unit and sincos_turn below (each within a few ulp of
// the exact value; the tails are cut at rho = sqrt(64 ln 2) = 6.66).
//
// The simhash projection R (m x k, row-major) of `seed` is R[i, j] = element i * k + j, as a
// double, or that double rounded to nearest for float32. R[i, j] depends on (seed, k, i, j)
// only: any tile of rows, any thread count and any consumer of this header give the same bits.
//
// Bitwise reproducibility needs IEEE double arithmetic without contraction of a * b + c into
// fused multiply-adds: compile users of this header with -ffp-contract=off. GCC contracts by
// default in C++ (also with -std=c++17) wherever the target has FMA, clang within expressions.
// Every function here has internal linkage, so translation units compiled for different
// instruction sets never share a copy.
#pragma once

#include <cstdint>
#include <cstring>

namespace matcompress {
namespace philox {

constexpr std::uint32_t kM0 = 0xD2511F53u;  // round multipliers
constexpr std::uint32_t kM1 = 0xCD9E8D57u;
constexpr std::uint32_t kW0 = 0x9E3779B9u;  // key increments (Weyl sequence)
constexpr std::uint32_t kW1 = 0xBB67AE85u;

/// Philox4x32 with `Rounds` rounds, in place on the 4-word counter x (x[0] lowest).
template <int Rounds = 10>
static inline void philox4x32(std::uint32_t x[4], std::uint32_t k0, std::uint32_t k1) {
#pragma GCC unroll 16
  for (int r = 0; r < Rounds; ++r) {
    if (r > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const std::uint64_t p0 = static_cast<std::uint64_t>(kM0) * x[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(kM1) * x[2];
    const std::uint32_t y0 = static_cast<std::uint32_t>(p1 >> 32) ^ x[1] ^ k0;
    const std::uint32_t y2 = static_cast<std::uint32_t>(p0 >> 32) ^ x[3] ^ k1;
    x[1] = static_cast<std::uint32_t>(p1);
    x[3] = static_cast<std::uint32_t>(p0);
    x[0] = y0;
    x[2] = y2;
  }
}

static inline double bits_to_double(std::uint64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

static inline std::uint64_t double_to_bits(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

/// A non-negative integer below 2^52 as a double, exactly (through the exponent field, which
/// vectorizes where integer-to-double conversions of 64-bit lanes do not).
static inline double small_uint_to_double(std::uint64_t n) {
  return bits_to_double(0x4330000000000000ull | n) - 0x1p52;
}

/// -ln((a + 1) / 2^32), in [0, 32 ln 2]. u = 2^-n * w with w in [sqrt(1/2), sqrt(2)), so
/// -ln u = n ln 2 - ln w, and ln w = 2 atanh(s), s = (w - 1) / (w + 1), |s| <= 0.172, by its
/// series to s^21 (the next term is below 2^-60 of the sum).
static inline double neg_log_unit(std::uint32_t a) {
  const double u = (small_uint_to_double(a) + 1.0) * 0x1p-32;  // exact, in (0, 1]
  const std::uint64_t ub = double_to_bits(u);
  const std::uint64_t n = 1023 - (ub >> 52);  // u in [2^-n, 2^(1-n))
  const std::uint64_t wb = (ub & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;  // [1, 2)
  // Above sqrt(2) (compared as bits: positive doubles order as integers), halve w (exponent - 1)
  // and take one ln 2 less; integer selects keep every lane 64 bits wide for the vectorizer.
  const std::uint64_t high = wb > 0x3FF6A09E667F3BCDull ? 1u : 0u;
  const double w = bits_to_double(wb - (high << 52));
  const double nd = small_uint_to_double(n - high);
  const double s = (w - 1.0) / (w + 1.0);
  const double z = s * s;
  // 2/3, 2/5, ..., 2/21
  double p = 0x1.8618618618618p-4;
  p = p * z + 0x1.af286bca1af28p-4;
  p = p * z + 0x1.e1e1e1e1e1e1ep-4;
  p = p * z + 0x1.1111111111111p-3;
  p = p * z + 0x1.3b13b13b13b14p-3;
  p = p * z + 0x1.745d1745d1746p-3;
  p = p * z + 0x1.c71c71c71c71cp-3;
  p = p * z + 0x1.2492492492492p-2;
  p = p * z + 0x1.999999999999ap-2;
  p = p * z + 0x1.5555555555555p-1;
  const double ln_w = 2.0 * s + s * (z * p);
  return nd * 0x1.62e42fefa39efp-1 - ln_w;  // ln 2
}

/// cos and sin of 2 pi (b + 1) / 2^32. The angle is split exactly, in integers, into a quadrant
/// q and phi = r * pi / 2^31 with r in [-2^29, 2^29), so |phi| <= pi / 4; sin and cos of phi
/// come from their Taylor series to phi^17 and phi^16 (the next terms are below 2^-55).
static inline void sincos_turn(std::uint32_t b, double* c, double* s) {
  const std::uint32_t w = b + 1u + (1u << 29);  // mod 2^32: a whole turn is 2^32
  const std::uint32_t q = (w >> 30) & 3u;
  const std::int32_t r = static_cast<std::int32_t>(w & 0x3FFFFFFFu) - (1 << 29);
  const double phi = static_cast<double>(r) * 0x1.921fb54442d18p-30;  // pi / 2^31
  const double z = phi * phi;
  double sn = 0x1.952c77030ad4ap-49;   // 1/17!
  sn = sn * z - 0x1.ae7f3e733b81fp-41;  // 1/15!
  sn = sn * z + 0x1.6124613a86d09p-33;  // 1/13!
  sn = sn * z - 0x1.ae64567f544e4p-26;  // 1/11!
  sn = sn * z + 0x1.71de3a556c734p-19;  // 1/9!
  sn = sn * z - 0x1.a01a01a01a01ap-13;  // 1/7!
  sn = sn * z + 0x1.1111111111111p-7;   // 1/5!
  sn = sn * z - 0x1.5555555555555p-3;   // 1/3!
  const double sin_phi = phi + phi * (z * sn);
  double cs = 0x1.ae7f3e733b81fp-45;   // 1/16!
  cs = cs * z - 0x1.93974a8c07c9dp-37;  // 1/14!
  cs = cs * z + 0x1.1eed8eff8d898p-29;  // 1/12!
  cs = cs * z - 0x1.27e4fb7789f5cp-22;  // 1/10!
  cs = cs * z + 0x1.a01a01a01a01ap-16;  // 1/8!
  cs = cs * z - 0x1.6c16c16c16c17p-10;  // 1/6!
  cs = cs * z + 0x1.5555555555555p-5;   // 1/4!
  cs = cs * z - 0.5;                    // 1/2!
  const double cos_phi = 1.0 + z * cs;
  // theta = q pi / 2 + phi: swap for odd q, negate cos for q = 1, 2 and sin for q = 2, 3. Done
  // on the bits in 64-bit lanes (a select on 32-bit q for 64-bit doubles stops AVX2
  // vectorization).
  const std::uint64_t q64 = q;
  const std::uint64_t swap = 0 - (q64 & 1u);
  const std::uint64_t cb = double_to_bits(cos_phi), sb = double_to_bits(sin_phi);
  const std::uint64_t cc = (sb & swap) | (cb & ~swap);
  const std::uint64_t ss = (cb & swap) | (sb & ~swap);
  *c = bits_to_double(cc ^ (((q64 + 1u) & 2u) << 62));
  *s = bits_to_double(ss ^ ((q64 & 2u) << 62));
}

/// The Box-Muller pair of two 32-bit words (see the header comment).
static inline void box_muller(std::uint32_t a, std::uint32_t b, double* z0, double* z1) {
  const double rho = __builtin_sqrt(2.0 * neg_log_unit(a));
  double c, s;
  sincos_turn(b, &c, &s);
  *z0 = rho * c;
  *z1 = rho * s;
}

/// The four Gaussian numbers of block b of the stream of `seed` (elements 4b .. 4b + 3).
static inline void gaussian_block(std::uint64_t seed, std::uint64_t b, double z[4]) {
  std::uint32_t x[4] = {static_cast<std::uint32_t>(b), static_cast<std::uint32_t>(b >> 32), 0u,
                        0u};
  philox4x32<10>(x, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  box_muller(x[0], x[1], &z[0], &z[1]);
  box_muller(x[2], x[3], &z[2], &z[3]);
}

/// Element e of the stream of `seed` (the scalar reference; gaussian_fill is the fast route).
static inline double gaussian_element(std::uint64_t seed, std::uint64_t e) {
  double z[4];
  gaussian_block(seed, e >> 2, z);
  return z[e & 3];
}

/// Elements [e0, e0 + count) of the stream of `seed`, converted to T, into out (size count).
/// Works on batches of 64 blocks in passes the compiler vectorizes: Philox round by round on
/// arrays of words, Box-Muller, and the interleave into element order.
template <typename T>
static inline void gaussian_fill(std::uint64_t seed, std::uint64_t e0, std::int64_t count,
                                 T* out) {
  constexpr int kBatch = 64;  // blocks per batch
  const std::uint32_t k0 = static_cast<std::uint32_t>(seed);
  const std::uint32_t k1 = static_cast<std::uint32_t>(seed >> 32);
  alignas(64) std::uint32_t x0[kBatch], x1[kBatch], x2[kBatch], x3[kBatch];
  alignas(64) double z[4][kBatch];
  std::uint64_t e = e0;
  const std::uint64_t end = e0 + static_cast<std::uint64_t>(count);
  while (e < end) {
    const std::uint64_t b0 = e >> 2;
    for (int i = 0; i < kBatch; ++i) {
      const std::uint64_t blk = b0 + static_cast<std::uint64_t>(i);
      x0[i] = static_cast<std::uint32_t>(blk);
      x1[i] = static_cast<std::uint32_t>(blk >> 32);
      x2[i] = 0u;
      x3[i] = 0u;
    }
#pragma GCC unroll 16
    for (int r = 0; r < 10; ++r) {  // philox4x32<10>, one round over the whole batch at a time
      const std::uint32_t rk0 = k0 + static_cast<std::uint32_t>(r) * kW0;
      const std::uint32_t rk1 = k1 + static_cast<std::uint32_t>(r) * kW1;
      for (int i = 0; i < kBatch; ++i) {
        const std::uint64_t p0 = static_cast<std::uint64_t>(kM0) * x0[i];
        const std::uint64_t p1 = static_cast<std::uint64_t>(kM1) * x2[i];
        const std::uint32_t y0 = static_cast<std::uint32_t>(p1 >> 32) ^ x1[i] ^ rk0;
        const std::uint32_t y2 = static_cast<std::uint32_t>(p0 >> 32) ^ x3[i] ^ rk1;
        x1[i] = static_cast<std::uint32_t>(p1);
        x3[i] = static_cast<std::uint32_t>(p0);
        x0[i] = y0;
        x2[i] = y2;
      }
    }
    for (int i = 0; i < kBatch; ++i) box_muller(x0[i], x1[i], &z[0][i], &z[1][i]);
    for (int i = 0; i < kBatch; ++i) box_muller(x2[i], x3[i], &z[2][i], &z[3][i]);
    const std::uint64_t batch_end = (b0 + kBatch) * 4;
    if (e == b0 * 4 && batch_end <= end) {  // a whole batch: a 4 x kBatch transpose
      for (int i = 0; i < kBatch; ++i)
        for (int l = 0; l < 4; ++l) out[4 * i + l] = static_cast<T>(z[l][i]);
      out += 4 * kBatch;
      e = batch_end;
    } else {
      const std::uint64_t stop = batch_end < end ? batch_end : end;
      for (; e < stop; ++e) *out++ = static_cast<T>(z[e & 3][(e >> 2) - b0]);
    }
  }
}

}  // namespace philox
}  // namespace matcompress
