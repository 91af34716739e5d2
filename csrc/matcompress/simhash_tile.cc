// The Gaussian numbers of the simhash projection. This file is compiled several times, once per
// instruction set, with MC_ISA_NS naming the namespace (see simd.h), and with -ffp-contract=off:
// philox.h's numbers must not depend on whether the target has fused multiply-adds.
#include "philox.h"
#include "simhash_tile.h"

namespace matcompress {
namespace MC_ISA_NS {

template <typename T>
void gaussian_fill(std::uint64_t seed, std::uint64_t e0, index_t count, T* out) {
  philox::gaussian_fill<T>(seed, e0, count, out);
}

template void gaussian_fill<float>(std::uint64_t, std::uint64_t, index_t, float*);
template void gaussian_fill<double>(std::uint64_t, std::uint64_t, index_t, double*);

}  // namespace MC_ISA_NS
}  // namespace matcompress
