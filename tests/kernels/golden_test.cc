// Every golden vector of tests/golden/ through the kernels directly, with 1
// and 2 threads (the threaded split must not change results beyond tolerance).
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/golden.h"
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

}  // namespace
}  // namespace attnserve::testing
