// Additive quantization: a point (a block of consecutive weights) is coded as the sum of one
// codeword from each of M codebooks. This is the encoder, a beam search over the codebooks
// (Babenko & Lempitsky 2014); the codebooks are fitted by the caller (matcompress.additive).
#pragma once

#include <cstdint>

#include "blas.h"
#include "common.h"

namespace matcompress {

struct AdditiveEncodeOptions {
  index_t beam = 8;    ///< hypotheses kept per point after each step (>= 1)
  int n_threads = 0;   ///< <= 0: the default
  bool ordered = false;  ///< step s may use codebook s only (residual-quantization order);
                         ///< else any codebook a hypothesis has not used (additive order)
};

/// Codes of n points (n x dim, row-major) against M codebooks of K codewords (M x K x dim).
///
/// Beam search: a hypothesis is a set of chosen codewords from distinct codebooks and its
/// residual. Step s extends every kept hypothesis by one codeword of a codebook it has not
/// used, scoring all of them at once, ||r - c||^2 = ||r||^2 - 2 <r, c> + ||c||^2, with the
/// inner products of a tile of residuals against a chunk of codewords by `gemm`; the `beam`
/// best distinct sets go on. After M steps the best full set wins. With `init` (n x M codes),
/// a point keeps its starting codes unless the search found a strictly lower error, so an
/// encode after a codebook refit never raises the error.
///
/// @param codes  out: n x M, codes[i * M + t] in [0, K) is the codeword of codebook t
/// @param err    out (or null): each point's squared error
/// @param beam_residuals  out (or null): n x beam x dim, the residuals of each point's final
///               hypotheses, best first (slots beyond the hypotheses found repeat the best);
///               residual training fits the next codebook to them
/// @return       the sum of the squared errors
template <typename T>
double additive_encode(const Gemm<T>& gemm, const T* x, index_t n, index_t dim,
                       const T* codebooks, index_t n_books, index_t n_codes,
                       const int32_t* init, const AdditiveEncodeOptions& options,
                       int32_t* codes, T* err, T* beam_residuals = nullptr);

}  // namespace matcompress
