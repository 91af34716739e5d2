// Products with factored matrices, x · W̃, computed from the factors (never the dense W̃). This
// file: the batch-1 (inference) fast path of a 4-bit scalar codebook. The other forms and the
// gradients come with the rest of the factored-product work.
#pragma once

#include <cstdint>

#include "common.h"

namespace matcompress {

/// y = x · W for W (m x n) stored as 4-bit codes into a scalar codebook of at most 16 entries:
/// W[i, j] = codebook[code(i, j)], codes packed two per byte along each row, the even column in
/// the low nibble (row stride `row_bytes` >= ceil(n / 2)); x of size m, y of size n (written).
/// The codes are decoded in registers (a 16-entry lookup by one permute on AVX-512, two on
/// AVX2); threads own disjoint column tiles and add the rows in order, so the result is the same
/// for any thread count.
void codebook4_gemv(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
                    index_t n, const float* codebook, index_t n_codes, float* y, int n_threads);

}  // namespace matcompress
