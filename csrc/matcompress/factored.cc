#include "factored.h"

#include <algorithm>

#include "factored_tile.h"

namespace matcompress {

void codebook4_gemv(const float* x, const std::uint8_t* codes, index_t row_bytes, index_t m,
                    index_t n, const float* codebook, index_t n_codes, float* y, int n_threads) {
  MC_CHECK(m >= 0 && n >= 0 && row_bytes >= (n + 1) / 2, "codebook4_gemv: bad sizes");
  MC_CHECK(n_codes >= 1 && n_codes <= 16, "codebook4_gemv: n_codes must be in [1, 16]");
  float cb[16] = {};
  std::copy(codebook, codebook + n_codes, cb);
  const Codebook4Kernel k = codebook4_kernel(active_isa());
  // Tiles of several kernel widths per task: each task owns its columns of y.
  const index_t full = n / k.width * k.width;
  const index_t per_task = k.width * std::max<index_t>(1, 512 / k.width);  // <= kMaxCols
  const index_t tasks = (full + per_task - 1) / per_task;
  parallel_for(0, tasks, resolve_threads_for_work(n_threads, double(m) * double(n), 4e6), 1,
               [&](index_t t, int) {
    const index_t j0 = t * per_task, cols = std::min(per_task, full - j0);
    k.fn(x, codes, row_bytes, m, j0, cols, cb, y);
  });
  for (index_t j = full; j < n; ++j) {  // the last columns, one at a time
    float acc = 0.0f;
    const std::uint8_t* p = codes + j / 2;
    const int shift = (j % 2) * 4;
    for (index_t i = 0; i < m; ++i, p += row_bytes) acc += x[i] * cb[(*p >> shift) & 15];
    y[j] = acc;
  }
}

}  // namespace matcompress
