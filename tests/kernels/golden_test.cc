// Every golden vector through the kernels directly, with 1 and 2 threads
// (the threaded split must not change results beyond tolerance):
// GoldenKernelsTest the version-1 cases of tests/golden/; VariantKernelsTest
// the format-2 cases of tests/golden-variants/ and tests/golden-generated/
// (attention-variants.md 9; decode cases by equivalence, decode-sessions.md
// 2) on both engines. Format-2 errors must also name one of expect_field;
// cases whose rule only the wire can see (golden_kernels.h KernelSkipReason)
// are skipped here and run by the e2e tests.
#include "tests/testing/golden.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/testing/golden_kernels.h"

namespace attnserve::testing {
namespace {

class GoldenKernelsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenKernelsTest, MatchesWithinTolerance) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  for (int threads : {1, 2}) {
    kernels::ComputeOptions options;
    options.threads = threads;
    EXPECT_EQ(RunGoldenThroughKernels(*c, options), "") << c->name << " threads=" << threads;
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenKernelsTest,
                         ::testing::ValuesIn(GoldenCaseFiles(GoldenDir())),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return GoldenTestName(param.param);
                         });

class VariantKernelsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VariantKernelsTest, MatchesOnBothEngines) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  if (const std::string reason = KernelSkipReason(*c); !reason.empty()) {
    GTEST_SKIP() << "a wire-level case: " << reason;
  }
  for (kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
    for (int threads : {1, 2}) {
      if (engine == kernels::Engine::kPlain && threads == 2) continue;
      kernels::ComputeOptions options;
      options.engine = engine;
      options.threads = threads;
      EXPECT_EQ(RunGoldenThroughKernels(*c, options), "")
          << c->name << (engine == kernels::Engine::kFast ? " fast" : " plain")
          << " threads=" << threads;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, VariantKernelsTest, ::testing::ValuesIn(VariantCaseFiles()),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return GoldenTestName(param.param);
                         });

}  // namespace
}  // namespace attnserve::testing
