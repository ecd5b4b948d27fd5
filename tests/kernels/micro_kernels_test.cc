// The fast engine's SIMD building blocks (kernels/simd/micro_kernels.h) on
// every ISA the CPU has, against plain double loops: the panel GEMM over
// every row count and ragged sizes, with and without accumulation; the panel
// transpose; exp over the softmax's input range, its exact zeros, and the
// row reductions; the finite scan. Each ISA's tests are built inside its own
// target region, as the kernels are (kernels/simd/*_target.cc), and skip on
// a CPU without it.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/simd/target_prelude.h"

#if defined(__x86_64__)
// As in kernels/simd/avx512_target.cc: GCC 12's AVX-512 intrinsics trip
// -Wuninitialized under a target pragma.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace attnserve::kernels {
namespace {

// Skips the tests of an ISA the CPU does not have (before their bodies, the
// only code built for it, run).
template <Isa kIsa>
class IsaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (KernelsFor(kIsa) == nullptr) GTEST_SKIP() << "the CPU has no " << IsaName(kIsa);
  }
};
using MicroKernelsAvx512Test = IsaTest<Isa::kAvx512>;
using MicroKernelsAvx2Test = IsaTest<Isa::kAvx2>;
using MicroKernelsBaselineTest = IsaTest<Isa::kBaseline>;

}  // namespace
}  // namespace attnserve::kernels

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c")
#define ATTN_ISA_LEVEL 2
namespace attnserve::kernels::avx512 {
namespace {
#include "kernels/simd/micro_kernels.h"
using namespace simd;  // NOLINT: the body names the ISA's kernels unqualified.
#define ATTN_TEST_SUITE MicroKernelsAvx512Test
#include "tests/kernels/micro_kernels_test_body.h"
#undef ATTN_TEST_SUITE
}  // namespace
}  // namespace attnserve::kernels::avx512
#undef ATTN_ISA_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define ATTN_ISA_LEVEL 1
namespace attnserve::kernels::avx2 {
namespace {
#include "kernels/simd/micro_kernels.h"
using namespace simd;  // NOLINT
#define ATTN_TEST_SUITE MicroKernelsAvx2Test
#include "tests/kernels/micro_kernels_test_body.h"
#undef ATTN_TEST_SUITE
}  // namespace
}  // namespace attnserve::kernels::avx2
#undef ATTN_ISA_LEVEL
#pragma GCC pop_options
#endif

#define ATTN_ISA_LEVEL 0
namespace attnserve::kernels::baseline {
namespace {
#include "kernels/simd/micro_kernels.h"
using namespace simd;  // NOLINT
#define ATTN_TEST_SUITE MicroKernelsBaselineTest
#include "tests/kernels/micro_kernels_test_body.h"
#undef ATTN_TEST_SUITE
}  // namespace
}  // namespace attnserve::kernels::baseline
#undef ATTN_ISA_LEVEL
