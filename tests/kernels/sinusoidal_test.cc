// Sinusoidal encoding (positional-methods.md 2.2): the interleaved table,
// odd d_model, angles in double, and attend adding P before the projections.
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;

kernels::EncodeArgs SinusoidEncode(Tensor x, int64_t offset,
                                   std::optional<double> base = std::nullopt) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kSinusoidal;
  args.params.base = base;
  args.offset = offset;
  args.inputs["x"] = std::move(x);
  return args;
}

// The table for S rows of width d from `offset`, through the kernel.
std::vector<float> Table(int64_t seq, int64_t d_model, int64_t offset,
                         std::optional<double> base = std::nullopt) {
  auto got = kernels::Encode(
      SinusoidEncode(Tensor({1, seq, d_model}, std::vector<float>(seq * d_model, 0.0f)), offset,
                     base),
      {});
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return {};
  EXPECT_EQ(got->outputs.at("table").shape(), (std::vector<int64_t>{seq, d_model}));
  // x = 0, so y is the table too.
  EXPECT_EQ(got->outputs.at("y").values(), got->outputs.at("table").values());
  return got->outputs.at("table").TakeValues();
}

TEST(SinusoidalTest, InterleavesSinAndCosAtKnownPositions) {
  // d_model = 4: columns (sin, cos) of p and of p / 10000^(2/4) = p / 100.
  const std::vector<float> table = Table(3, 4, 1);
  ASSERT_EQ(table.size(), 12u);
  for (int s = 0; s < 3; ++s) {
    const double p = 1 + s;
    EXPECT_NEAR(table[s * 4 + 0], std::sin(p), 1e-7) << p;
    EXPECT_NEAR(table[s * 4 + 1], std::cos(p), 1e-7) << p;
    EXPECT_NEAR(table[s * 4 + 2], std::sin(p / 100), 1e-7) << p;
    EXPECT_NEAR(table[s * 4 + 3], std::cos(p / 100), 1e-7) << p;
  }
  // Position 0 is (0, 1, 0, 1).
  const std::vector<float> first = Table(1, 4, 0);
  EXPECT_EQ(first, (std::vector<float>{0, 1, 0, 1}));
}

TEST(SinusoidalTest, EncodeAddsTheTableToEveryBatchRow) {
  std::mt19937 rng(21);
  const Tensor x = RandomTensor({2, 3, 6}, rng);
  auto got = kernels::Encode(SinusoidEncode(x, 4), {});
  ASSERT_TRUE(got.ok()) << got.status();
  const absl::Span<const float> y = got->outputs.at("y").values();
  const std::vector<float> table = Table(3, 6, 4);
  for (size_t b = 0; b < 2; ++b) {
    for (size_t n = 0; n < 18; ++n) {
      EXPECT_FLOAT_EQ(y[b * 18 + n], x.values()[b * 18 + n] + table[n]);
    }
  }
}

TEST(SinusoidalTest, OddDModelEndsInALoneSine) {
  // d_model = 5: pairs at frequencies 1, 10000^(-2/5), then column 4 a sine at 10000^(-4/5).
  const std::vector<float> table = Table(2, 5, 7);
  ASSERT_EQ(table.size(), 10u);
  for (int s = 0; s < 2; ++s) {
    const double p = 7 + s;
    EXPECT_NEAR(table[s * 5 + 0], std::sin(p), 1e-7);
    EXPECT_NEAR(table[s * 5 + 1], std::cos(p), 1e-7);
    EXPECT_NEAR(table[s * 5 + 2], std::sin(p / std::pow(10000.0, 0.4)), 1e-7);
    EXPECT_NEAR(table[s * 5 + 3], std::cos(p / std::pow(10000.0, 0.4)), 1e-7);
    EXPECT_NEAR(table[s * 5 + 4], std::sin(p / std::pow(10000.0, 0.8)), 1e-7);
  }
  // d_model = 1: a single sine of the position.
  const std::vector<float> single = Table(3, 1, 2);
  EXPECT_NEAR(single[0], std::sin(2.0), 1e-7);
  EXPECT_NEAR(single[1], std::sin(3.0), 1e-7);
  EXPECT_NEAR(single[2], std::sin(4.0), 1e-7);
}

TEST(SinusoidalTest, BaseSetsTheFrequencies) {
  const std::vector<float> table = Table(1, 4, 3, 500.0);
  EXPECT_NEAR(table[0], std::sin(3.0), 1e-7);
  EXPECT_NEAR(table[2], std::sin(3.0 / std::sqrt(500.0)), 1e-7);
  EXPECT_NEAR(table[3], std::cos(3.0 / std::sqrt(500.0)), 1e-7);
}

TEST(SinusoidalTest, AnglesAreFormedInDoubleSoPosition2000IsAccurateTo1e6) {
  const int64_t d_model = 64, seq = 4, offset = 2000;
  const std::vector<float> table = Table(seq, d_model, offset);
  ASSERT_EQ(table.size(), static_cast<size_t>(seq * d_model));
  double worst = 0, worst_float_angles = 0;
  for (int64_t s = 0; s < seq; ++s) {
    const std::vector<double> expected =
        ReferenceSinusoid(static_cast<double>(offset + s), d_model, 10000);
    for (int64_t c = 0; c < d_model; ++c) {
      const double got = table[static_cast<size_t>(s * d_model + c)];
      worst = std::max(worst, std::abs(got - expected[c]));
      // What float32 angles would give: the error this rule exists to prevent.
      const float angle = static_cast<float>(offset + s) /
                          std::pow(10000.0f, static_cast<float>(2 * (c / 2)) / d_model);
      const double float_value = c % 2 == 0 ? std::sin(angle) : std::cos(angle);
      worst_float_angles = std::max(worst_float_angles, std::abs(float_value - expected[c]));
    }
  }
  EXPECT_LT(worst, 1e-6);
  EXPECT_GT(worst_float_angles, 1e-5);  // So the bound above can tell them apart.
  // The reference itself against hand values at position 2000.
  const std::vector<double> row = ReferenceSinusoid(2000, 4, 10000);
  EXPECT_DOUBLE_EQ(row[0], std::sin(2000.0));
  EXPECT_DOUBLE_EQ(row[3], std::cos(20.0));
}

TEST(SinusoidalTest, InvalidBaseAndNegativeOffsetAreInvalidArgument) {
  const Tensor x({1, 2, 4}, std::vector<float>(8, 0.0f));
  for (double base : {0.0, -10.0, std::nan("")}) {
    const kernels::EncodeArgs args = SinusoidEncode(x, 0, base);
    EXPECT_EQ(kernels::Encode(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ReferenceEncode(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // api.md: a negative offset is INVALID_ARGUMENT for sinusoidal (no table to overrun).
  const kernels::EncodeArgs negative = SinusoidEncode(x, -1);
  EXPECT_EQ(kernels::Encode(negative, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceEncode(negative).status().code(), absl::StatusCode::kInvalidArgument);
}

// d_model = 2 has P[p] = (sin p, cos p), so P[a] . P[b] = cos(a - b).
kernels::AttendArgs IdentityProjection(int64_t sq, int64_t sk, int64_t heads) {
  kernels::AttendArgs args;
  args.method = MethodKind::kSinusoidal;
  args.num_heads = heads;
  args.inputs["x_q"] = Tensor({1, sq, 2}, std::vector<float>(sq * 2, 0.0f));
  args.inputs["x_kv"] = Tensor({1, sk, 2}, std::vector<float>(sk * 2, 0.0f));
  for (const char* w : {"w_q", "w_k", "w_v"}) args.inputs[w] = Tensor({2, 2}, {1, 0, 0, 1});
  args.return_probs = true;
  return args;
}

std::vector<double> Softmax(const std::vector<double>& s) {
  double m = s[0];
  for (double x : s) m = std::max(m, x);
  double sum = 0;
  for (double x : s) sum += std::exp(x - m);
  std::vector<double> p;
  for (double x : s) p.push_back(std::exp(x - m) / sum);
  return p;
}

TEST(SinusoidalTest, AttendAddsTheEncodingBeforeTheProjections) {
  // x = 0 and identity weights: q = P[q_pos], k = v = P[j]; D = 2, scale 1/sqrt(2).
  for (std::optional<int64_t> offset : {std::optional<int64_t>(), std::optional<int64_t>(5)}) {
    kernels::AttendArgs args = IdentityProjection(1, 3, 1);
    args.query_offset = offset;
    const double q_pos = offset.value_or(2);
    auto got = kernels::Attend(args, {});
    ASSERT_TRUE(got.ok()) << got.status();
    std::vector<double> scores;
    for (int j = 0; j < 3; ++j) scores.push_back(std::cos(q_pos - j) / std::sqrt(2.0));
    const std::vector<double> p = Softmax(scores);
    double out0 = 0, out1 = 0;
    for (int j = 0; j < 3; ++j) {
      EXPECT_NEAR(got->probs->values()[j], p[j], 1e-6) << "offset " << q_pos;
      out0 += p[j] * std::sin(j);
      out1 += p[j] * std::cos(j);
    }
    EXPECT_NEAR(got->out.values()[0], out0, 1e-6);
    EXPECT_NEAR(got->out.values()[1], out1, 1e-6);
  }
}

TEST(SinusoidalTest, ProjectionColumnsAreSplitIntoHeadsInOrder) {
  // Two heads of D = 1: head 0 takes column 0 (the sine), head 1 column 1 (the cosine).
  kernels::AttendArgs args = IdentityProjection(1, 3, 2);
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->probs->shape(), (std::vector<int64_t>{1, 2, 1, 3}));
  std::vector<double> sine, cosine;
  for (int j = 0; j < 3; ++j) {
    sine.push_back(std::sin(2.0) * std::sin(j));
    cosine.push_back(std::cos(2.0) * std::cos(j));
  }
  const std::vector<double> p0 = Softmax(sine), p1 = Softmax(cosine);
  for (int j = 0; j < 3; ++j) {
    EXPECT_NEAR(got->probs->values()[j], p0[j], 1e-6);
    EXPECT_NEAR(got->probs->values()[3 + j], p1[j], 1e-6);
  }
}

TEST(SinusoidalTest, ProjectionWidthsMustFitTheHeads) {
  kernels::AttendArgs args = IdentityProjection(1, 3, 2);
  args.inputs["w_k"] = Tensor({2, 4}, std::vector<float>(8, 0.0f));  // w_q is [2, 2].
  EXPECT_EQ(kernels::Attend(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  args = IdentityProjection(1, 3, 2);
  args.inputs["w_v"] = Tensor({2, 3}, std::vector<float>(6, 0.0f));  // 3 % 2 != 0.
  EXPECT_EQ(kernels::Attend(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  args = IdentityProjection(1, 3, 1);
  args.inputs["w_q"] = Tensor({3, 2}, std::vector<float>(6, 0.0f));  // d_model mismatch.
  EXPECT_EQ(kernels::Attend(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve::testing
