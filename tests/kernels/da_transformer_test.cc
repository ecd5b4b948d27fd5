// DA-Transformer (positional-methods.md 2.8): the learnable-sigmoid
// coefficient, its overflow-safe evaluation, ReLU before re-scaling, uniform
// rows, the literal negative scale, and shape rules.
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/positional/tables.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;

kernels::EncodeArgs DaEncode(std::vector<float> w, std::vector<float> v, int64_t sq, int64_t sk,
                             std::optional<int64_t> query_offset = std::nullopt) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kDaTransformer;
  const int64_t w_heads = static_cast<int64_t>(w.size());
  const int64_t v_heads = static_cast<int64_t>(v.size());
  args.inputs["dist_w"] = Tensor({w_heads}, std::move(w));
  args.inputs["dist_v"] = Tensor({v_heads}, std::move(v));
  args.sq = sq;
  args.sk = sk;
  args.query_offset = query_offset;
  return args;
}

std::vector<float> Coefficients(const kernels::EncodeArgs& args) {
  auto got = kernels::Encode(args, {});
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return {};
  return got->outputs.at("coeff").TakeValues();
}

// (1 + e^v) / (1 + e^(v - w d)), directly (for arguments where it cannot overflow).
double Rhat(double w, double v, double d) { return (1 + std::exp(v)) / (1 + std::exp(v - w * d)); }

TEST(DaTransformerTest, CoefficientIsOneAtDistanceZero) {
  const std::vector<float> coeff = Coefficients(DaEncode({0.7f, -2, 5}, {1, -3, 20}, 4, 4));
  ASSERT_EQ(coeff.size(), 48u);
  for (int h = 0; h < 3; ++h) {
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(coeff[(h * 4 + i) * 4 + i], 1.0f) << h << "," << i;
  }
  EXPECT_DOUBLE_EQ(ReferenceDaCoefficient(-2, -3, 0), 1.0);
}

TEST(DaTransformerTest, CoefficientIsTheLearnableSigmoidOfTheWeightedDistance) {
  // w = 0.5, v = 1, one query at position 3 against keys 0..5: distances 3,2,1,0,1,2.
  const std::vector<float> coeff = Coefficients(DaEncode({0.5f}, {1}, 1, 6, 3));
  ASSERT_EQ(coeff.size(), 6u);
  const double distance[] = {3, 2, 1, 0, 1, 2};
  for (int j = 0; j < 6; ++j) {
    EXPECT_NEAR(coeff[j], Rhat(0.5, 1, distance[j]), 1e-6) << j;
    EXPECT_NEAR(ReferenceDaCoefficient(0.5, 1, distance[j]), Rhat(0.5, 1, distance[j]), 1e-15);
  }
  // Distance 2 gives x = v: (1 + e) / 2.
  EXPECT_NEAR(coeff[1], (1 + std::exp(1.0)) / 2, 1e-6);
}

TEST(DaTransformerTest, NoOverflowWhenTheSigmoidArgumentIsAboutAThousand) {
  // |x - v| up to 1000: w = +-10 over distances 0..100.
  const std::vector<float> grows = Coefficients(DaEncode({10}, {0}, 1, 101, 100));
  const std::vector<float> shrinks = Coefficients(DaEncode({-10}, {0}, 1, 101, 100));
  ASSERT_EQ(grows.size(), 101u);
  for (int j = 0; j < 101; ++j) {
    const double x = 10.0 * (100 - j);
    ASSERT_TRUE(std::isfinite(grows[j]) && std::isfinite(shrinks[j])) << j;
    EXPECT_NEAR(grows[j], 2 / (1 + std::exp(-x)), 1e-6) << j;
    EXPECT_NEAR(shrinks[j], 2 / (1 + std::exp(x)), 1e-6) << j;
  }
  // exp(v) itself overflows double for v = 800, Rhat does not: e^d (1 + e^-800) / (1 + e^(d-800)).
  const std::vector<float> large_v = Coefficients(DaEncode({1}, {800}, 1, 4, 3));
  ASSERT_EQ(large_v.size(), 4u);
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(large_v[j], std::exp(3.0 - j), 1e-6 * std::exp(3.0 - j));
  EXPECT_NEAR(ReferenceDaCoefficient(1, 800, 3), std::exp(3.0), 1e-12 * std::exp(3.0));
  EXPECT_NEAR(ReferenceDaCoefficient(10, 0, 100), 2.0, 1e-15);
  // The same in attend, over a long row: finite and equal to the reference.
  RandomCase c;
  c.method = MethodKind::kDaTransformer;
  c.heads = 2;
  c.sq = c.sk = 101;
  std::mt19937 rng(71);
  kernels::AttendArgs args = RandomAttendArgs(c, rng);
  args.inputs["dist_w"] = Tensor({2}, {10, -10});
  args.inputs["dist_v"] = Tensor({2}, {0, 3});
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  auto ref = ReferenceAttend(args);
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(CompareToReference("out", got->out, ref->at("out"), 1e-4, 1e-5), "");
  EXPECT_EQ(CompareToReference("probs", *got->probs, ref->at("probs"), 1e-4, 1e-5), "");
}

// The attend path tabulates Rhat per head by stepping e^(v - w d) from
// exact anchors (DaCoefficients): it must agree with the direct
// DaCoefficient to ~1e-14 relative (beyond exp's own conditioning), in
// every regime of the exponent E = v - w d: saturated, stepped either way,
// crossing the regimes inside a run, v >= 700, w = 0.
TEST(DaTransformerTest, TabulatedCoefficientsMatchTheDirectOnes) {
  const double ws[] = {0, 1e-3, 0.05, -0.05, 0.7, -2, 9.5, -12, 40};
  const double vs[] = {0, -3, 5, 650, 699, 700, 800, -700};
  const int64_t firsts[] = {0, 1, 63, 5000};
  int compared = 0;
  for (double w : ws) {
    for (double v : vs) {
      for (int64_t first : firsts) {
        const int64_t count = 300;
        std::vector<double> got(static_cast<size_t>(count));
        kernels::DaCoefficients(w, v, first, count, got.data());
        for (int64_t n = 0; n < count; ++n) {
          const double want = kernels::DaCoefficient(w, v, static_cast<double>(first + n));
          ASSERT_TRUE(std::isfinite(want) == std::isfinite(got[n]))
              << "w=" << w << " v=" << v << " d=" << first + n << ": " << got[n] << " vs " << want;
          if (!std::isfinite(want)) continue;
          // The stepping's own error, plus exp's condition number |E| times
          // the rounding of E = v - w d (formed differently by each).
          const double exponent = std::fabs(v - w * static_cast<double>(first + n));
          ASSERT_NEAR(got[n], want, (2e-14 + 5e-16 * exponent) * std::fabs(want) + 1e-300)
              << "w=" << w << " v=" << v << " d=" << first + n;
          ++compared;
        }
      }
    }
  }
  EXPECT_GT(compared, 80000);
}

kernels::AttendArgs DaAttend(std::vector<float> q, std::vector<float> k, int64_t d,
                             float w, float v) {
  kernels::AttendArgs args;
  args.method = MethodKind::kDaTransformer;
  const int64_t sq = static_cast<int64_t>(q.size()) / d, sk = static_cast<int64_t>(k.size()) / d;
  args.inputs["q"] = Tensor({1, 1, sq, d}, std::move(q));
  args.inputs["k"] = Tensor({1, 1, sk, d}, std::move(k));
  std::vector<float> values(static_cast<size_t>(sk));
  for (int64_t j = 0; j < sk; ++j) values[j] = static_cast<float>(j * j);
  args.inputs["v"] = Tensor({1, 1, sk, 1}, values);
  args.inputs["dist_w"] = Tensor({1}, {w});
  args.inputs["dist_v"] = Tensor({1}, {v});
  args.return_probs = true;
  return args;
}

TEST(DaTransformerTest, AllNegativeDotProductsGiveUniformProbabilities) {
  // q = (1, 1) against keys with negative dot products: every score is 0.
  kernels::AttendArgs args = DaAttend({1, 1}, {-1, -2, -3, 0, -1, -1, -0.5f, -4}, 2, 3, 2);
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  for (int j = 0; j < 4; ++j) EXPECT_FLOAT_EQ(got->probs->values()[j], 0.25f) << j;
  EXPECT_FLOAT_EQ(got->out.values()[0], (0 + 1 + 4 + 9) / 4.0f);
  // Causal, two queries at positions 0 and 1: uniform over the unmasked keys.
  kernels::AttendArgs causal = DaAttend({1, 1, 2, 0}, {-1, -2, -3, 0, -1, -1}, 2, 3, 2);
  causal.query_offset = 0;
  causal.causal = true;
  got = kernels::Attend(causal, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<float> expected = {1, 0, 0, 0.5f, 0.5f, 0};
  for (size_t n = 0; n < expected.size(); ++n) EXPECT_FLOAT_EQ(got->probs->values()[n], expected[n]);
}

TEST(DaTransformerTest, ReluOnTheRawDotProductThenRescaling) {
  // D = 1, q = 1, k = (2, -1, 1), w = 1, v = 0, query at position 2:
  // distances 2, 1, 0 -> scores 2 * Rhat(2), 0, 1 (times scale 1).
  kernels::AttendArgs args = DaAttend({1}, {2, -1, 1}, 1, 1, 0);
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const double s0 = 2 * Rhat(1, 0, 2);
  const double sum = std::exp(s0) + 1 + std::exp(1.0);
  EXPECT_NEAR(got->probs->values()[0], std::exp(s0) / sum, 1e-6);
  EXPECT_NEAR(got->probs->values()[1], 1 / sum, 1e-6);
  EXPECT_NEAR(got->probs->values()[2], std::exp(1.0) / sum, 1e-6);
}

TEST(DaTransformerTest, NegativeScaleIsAppliedLiterally) {
  // Same request, scale -1: scores -2 * Rhat(2), 0 (ReLU gave 0), -1.
  kernels::AttendArgs args = DaAttend({1}, {2, -1, 1}, 1, 1, 0);
  args.scale = -1.0;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const double s0 = -2 * Rhat(1, 0, 2);
  const double sum = std::exp(s0) + 1 + std::exp(-1.0);
  EXPECT_NEAR(got->probs->values()[0], std::exp(s0) / sum, 1e-6);
  EXPECT_NEAR(got->probs->values()[1], 1 / sum, 1e-6);
  EXPECT_NEAR(got->probs->values()[2], std::exp(-1.0) / sum, 1e-6);
  auto ref = ReferenceAttend(args);
  ASSERT_TRUE(ref.ok());
  EXPECT_NEAR(ref->at("probs").data[1], 1 / sum, 1e-12);
}

TEST(DaTransformerTest, DistanceParametersMustHaveOneValuePerHead) {
  RandomCase c;
  c.method = MethodKind::kDaTransformer;
  c.heads = 2;
  std::mt19937 rng(72);
  const kernels::AttendArgs good = RandomAttendArgs(c, rng);
  ASSERT_TRUE(kernels::Attend(good, {}).ok());
  const struct {
    const char* name;
    std::vector<int64_t> shape;
  } bad[] = {{"dist_w", {3}}, {"dist_v", {1}}, {"dist_w", {2, 1}}};
  for (const auto& b : bad) {
    kernels::AttendArgs args = good;
    args.inputs[b.name] = RandomTensor(b.shape, rng);
    auto got = kernels::Attend(args, {});
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << b.name;
    EXPECT_NE(got.status().message().find(b.name), absl::string_view::npos) << got.status();
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Encode: dist_w and dist_v must agree with each other.
  const kernels::EncodeArgs encode = DaEncode({1, 2}, {1}, 2, 2);
  EXPECT_EQ(kernels::Encode(encode, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceEncode(encode).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve::testing
