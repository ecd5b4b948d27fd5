// oneDNN capped at the kernels' ISA (kernels/onednn_isa.h): the cap takes
// (oneDNN then reports that ISA and its matmul still computes the right
// product), and a lower cap after oneDNN's first primitive, which oneDNN
// would ignore, is refused with a status. One test: oneDNN's ISA is per
// process, fixed at its first primitive, so the steps must run in this
// order in a process of their own (ctest runs each test in its own).
#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/isa.h"
#include "kernels/onednn_isa.h"
#include "kernels/onednn_matmul.h"

namespace attnserve::kernels {
namespace {

TEST(OneDnnIsaTest, CapTakesBeforeTheFirstPrimitiveAndIsRefusedAfter) {
  const char* operator_cap = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (operator_cap != nullptr && *operator_cap != '\0') {
    GTEST_SKIP() << "ONEDNN_MAX_CPU_ISA is set: the cap leaves oneDNN alone";
  }
  // The lowest ISA above the baseline the CPU has, so the cap is visible
  // (a baseline-only CPU checks sse41).
  const Isa isa = KernelsFor(Isa::kAvx2) != nullptr ? Isa::kAvx2 : Isa::kBaseline;
  ASSERT_TRUE(CapOneDnnIsa(isa).ok());
  EXPECT_EQ(OneDnnIsaName(), isa == Isa::kAvx2 ? "avx2" : "sse41");

  // [2 x 3] @ [3 x 2] on the capped JIT.
  const std::vector<float> x = {1, 2, 3, 4, 5, 6}, w = {1, 0, 0, 1, 1, 1};
  std::vector<float> y(4);
  ASSERT_TRUE(MatMul(2, 3, 2, x.data(), 3, w.data(), 2, y.data(), 2, 1).ok());
  EXPECT_EQ(y, (std::vector<float>{4, 5, 10, 11}));

  // A lower cap now would change nothing: oneDNN 2.6 accepts and ignores it.
  if (isa == Isa::kBaseline) return;
  const absl::Status late = CapOneDnnIsa(Isa::kBaseline);
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
  EXPECT_NE(late.message().find("runs avx2 already"), absl::string_view::npos) << late;
}

}  // namespace
}  // namespace attnserve::kernels
