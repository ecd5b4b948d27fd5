// ALiBi (positional-methods.md 2.7): slopes, the unscaled bias, symmetry when
// not causal, and equivalence with the public +m*j bias under the mask.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;

kernels::EncodeArgs AlibiEncode(int64_t heads, int64_t sq, int64_t sk,
                                std::optional<int64_t> query_offset = std::nullopt) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kAlibi;
  args.num_heads = heads;
  args.sq = sq;
  args.sk = sk;
  args.query_offset = query_offset;
  return args;
}

// Softmax of one row, in double.
std::vector<double> Softmax(const std::vector<double>& scores) {
  double m = scores[0];
  for (double s : scores) m = std::max(m, s);
  double sum = 0;
  for (double s : scores) sum += std::exp(s - m);
  std::vector<double> p;
  for (double s : scores) p.push_back(std::exp(s - m) / sum);
  return p;
}

TEST(AlibiTest, SlopesMatchGetSlopesForNonPowersOfTwo) {
  const struct {
    int64_t heads;
    std::vector<double> exponents;  // slope = 2^exponent
  } cases[] = {
      {1, {-8}},
      {2, {-4, -8}},
      {3, {-4, -8, -2}},
      {5, {-2, -4, -6, -8, -1}},
      {6, {-2, -4, -6, -8, -1, -3}},
      {8, {-1, -2, -3, -4, -5, -6, -7, -8}},
      {12, {-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5}},
  };
  for (const auto& c : cases) {
    auto got = kernels::Encode(AlibiEncode(c.heads, 1, 1), {});
    ASSERT_TRUE(got.ok()) << got.status();
    const Tensor& slopes = got->outputs.at("slopes");
    ASSERT_EQ(slopes.shape(), std::vector<int64_t>{c.heads});
    const std::vector<double> reference = ReferenceAlibiSlopes(c.heads);
    ASSERT_EQ(reference.size(), c.exponents.size());
    for (size_t h = 0; h < c.exponents.size(); ++h) {
      const double expected = std::exp2(c.exponents[h]);
      EXPECT_FLOAT_EQ(slopes.values()[h], static_cast<float>(expected))
          << "H=" << c.heads << " head " << h;
      EXPECT_NEAR(reference[h], expected, 1e-15 * expected) << "H=" << c.heads << " head " << h;
    }
  }
}

TEST(AlibiTest, EncodeBiasIsMinusSlopeTimesAbsoluteDistance) {
  // H=3 (slopes 2^-4, 2^-8, 2^-2), 2 queries at positions 1 and 2, 4 keys.
  auto got = kernels::Encode(AlibiEncode(3, 2, 4, 1), {});
  ASSERT_TRUE(got.ok()) << got.status();
  const Tensor& bias = got->outputs.at("bias");
  ASSERT_EQ(bias.shape(), (std::vector<int64_t>{3, 2, 4}));
  const double slopes[] = {1.0 / 16, 1.0 / 256, 1.0 / 4};
  for (int64_t h = 0; h < 3; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < 4; ++j) {
        const double expected = -slopes[h] * std::abs(static_cast<double>(1 + i - j));
        EXPECT_FLOAT_EQ(bias.values()[static_cast<size_t>((h * 2 + i) * 4 + j)],
                        static_cast<float>(expected))
            << h << "," << i << "," << j;
      }
    }
  }
  // Head 2, query 0 (position 1): keys 0..3 -> -1/4, 0, -1/4, -1/2.
  EXPECT_EQ(bias.values()[16], -0.25f);
  EXPECT_EQ(bias.values()[17], 0.0f);
  EXPECT_EQ(bias.values()[19], -0.5f);
}

TEST(AlibiTest, NonCausalBiasIsSymmetricAroundTheQuery) {
  auto got = kernels::Encode(AlibiEncode(1, 1, 5, 2), {});
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<float>& bias = got->outputs.at("bias").values();
  const float m = 1.0f / 256;
  EXPECT_EQ(bias[2], 0.0f);
  EXPECT_EQ(bias[1], -m);
  EXPECT_EQ(bias[3], -m);
  EXPECT_EQ(bias[0], -2 * m);
  EXPECT_EQ(bias[4], -2 * m);
}

TEST(AlibiTest, BiasIsAddedAfterScaling) {
  // H=2 (slopes 1/16, 1/256), one query at position 2, D=1, scale 3:
  // score_h(j) = 3 * k_j - m_h * (2 - j), not 3 * (k_j - m_h * (2 - j)).
  kernels::AttendArgs args;
  args.method = MethodKind::kAlibi;
  args.inputs["q"] = Tensor({1, 2, 1, 1}, {1, 1});
  args.inputs["k"] = Tensor({1, 2, 3, 1}, {1, 0, -1, 1, 0, -1});
  args.inputs["v"] = Tensor({1, 2, 3, 3}, {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1});
  args.scale = 3.0;
  args.return_probs = true;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const double slopes[] = {1.0 / 16, 1.0 / 256};
  for (int h = 0; h < 2; ++h) {
    const double m = slopes[h];
    const std::vector<double> p = Softmax({3 - 2 * m, -m, -3});
    for (int j = 0; j < 3; ++j) {
      EXPECT_NEAR(got->probs->values()[static_cast<size_t>(h * 3 + j)], p[j], 1e-6);
      // v is the identity, so out is the probability row.
      EXPECT_NEAR(got->out.values()[static_cast<size_t>(h * 3 + j)], p[j], 1e-6);
    }
  }
}

TEST(AlibiTest, CausalProbsEqualThoseOfThePublicPlusMjBias) {
  // The public implementations add +m*j instead of -m*(i-j): a constant per
  // row, so identical probabilities under the causal mask.
  RandomCase c;
  c.method = MethodKind::kAlibi;
  c.heads = 3;
  c.sq = 5;
  c.sk = 9;
  c.d = 4;
  c.causal = true;
  std::mt19937 rng(31);
  const kernels::AttendArgs args = RandomAttendArgs(c, rng);
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<double> slopes = {1.0 / 16, 1.0 / 256, 1.0 / 4};
  const std::vector<float>& q = args.inputs.at("q").values();
  const std::vector<float>& k = args.inputs.at("k").values();
  for (int64_t h = 0; h < 3; ++h) {
    for (int64_t i = 0; i < 5; ++i) {
      const int64_t q_pos = 4 + i;
      std::vector<double> scores;
      for (int64_t j = 0; j <= q_pos; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < 4; ++e) {
          dot += static_cast<double>(q[static_cast<size_t>((h * 5 + i) * 4 + e)]) *
                 k[static_cast<size_t>((h * 9 + j) * 4 + e)];
        }
        scores.push_back(dot / 2 + slopes[h] * static_cast<double>(j));
      }
      const std::vector<double> p = Softmax(scores);
      for (int64_t j = 0; j < 9; ++j) {
        const double expected = j <= q_pos ? p[static_cast<size_t>(j)] : 0.0;
        EXPECT_NEAR(got->probs->values()[static_cast<size_t>((h * 5 + i) * 9 + j)], expected,
                    1e-6)
            << h << "," << i << "," << j;
      }
    }
  }
}

TEST(AlibiTest, EncodeRejectsNonPositiveSizes) {
  for (const kernels::EncodeArgs& args :
       {AlibiEncode(0, 2, 2), AlibiEncode(2, 0, 2), AlibiEncode(2, 2, 0),
        AlibiEncode(2, 3, 2), AlibiEncode(2, 2, 2, -1)}) {
    EXPECT_EQ(kernels::Encode(args, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << args.num_heads << " " << args.sq << " " << args.sk;
    EXPECT_EQ(ReferenceEncode(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace attnserve::testing
