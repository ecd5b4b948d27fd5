// ALiBi (positional-methods.md 2.7): slopes, the unscaled bias, symmetry when
// not causal, and equivalence with the public +m*j bias under the mask; the
// custom `slopes` input (attention-variants.md 7) and its rules.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
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
  const absl::Span<const float> bias = got->outputs.at("bias").values();
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
  const absl::Span<const float> q = args.inputs.at("q").values();
  const absl::Span<const float> k = args.inputs.at("k").values();
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

TEST(AlibiTest, EncodeReturnsTheCustomSlopesAndTheirBias) {
  // Zero and negative slopes are allowed (attention-variants.md 7: finite).
  const std::vector<float> custom = {0.5f, 0.0f, -0.25f};
  kernels::EncodeArgs args = AlibiEncode(3, 2, 4, 1);
  args.inputs["slopes"] = Tensor({3}, custom);
  auto got = kernels::Encode(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->outputs.at("slopes").values(), custom);
  const Tensor& bias = got->outputs.at("bias");
  ASSERT_EQ(bias.shape(), (std::vector<int64_t>{3, 2, 4}));
  for (int64_t h = 0; h < 3; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < 4; ++j) {
        const double expected = -static_cast<double>(custom[h]) * std::abs(1.0 + i - j);
        EXPECT_EQ(bias.values()[static_cast<size_t>((h * 2 + i) * 4 + j)],
                  static_cast<float>(expected))
            << h << "," << i << "," << j;
      }
    }
  }
}

// Attend with custom slopes against the softmax of scale * q.k - m_h |i - j|
// formed here in double, on both engines, causal and not, positions far
// enough for the engine's double path too.
TEST(AlibiTest, AttendUsesTheCustomSlopesOnBothEngines) {
  std::mt19937 rng(37);
  const int64_t heads = 3, sq = 5, sk = 40, d = 4;
  for (const int64_t query_offset : {int64_t{35}, int64_t{1} << 25}) {
    // Far positions with slopes small enough that the logits stay near 1
    // (a float32 logit of 1e7 is only exact to 1).
    const float unit = query_offset > 1000 ? 1.0f / static_cast<float>(query_offset) : 1.0f;
    const std::vector<float> custom = {0.3f * unit, 0.0f, -0.05f * unit};
    for (const bool causal : {false, true}) {
      kernels::AttendArgs args;
      args.method = MethodKind::kAlibi;
      args.inputs["q"] = RandomTensor({1, heads, sq, d}, rng);
      args.inputs["k"] = RandomTensor({1, heads, sk, d}, rng);
      args.inputs["v"] = RandomTensor({1, heads, sk, 3}, rng);
      args.inputs["slopes"] = Tensor({heads}, custom);
      args.causal = causal;
      args.query_offset = query_offset;
      args.return_probs = true;
      const absl::Span<const float> q = args.inputs.at("q").values();
      const absl::Span<const float> k = args.inputs.at("k").values();
      for (const kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
        kernels::ComputeOptions options;
        options.engine = engine;
        auto got = kernels::Attend(args, options);
        ASSERT_TRUE(got.ok()) << got.status();
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t i = 0; i < sq; ++i) {
            const int64_t q_pos = query_offset + i;
            std::vector<double> scores;
            for (int64_t j = 0; j < sk && (!causal || j <= q_pos); ++j) {
              double dot = 0;
              for (int64_t e = 0; e < d; ++e) {
                dot += static_cast<double>(q[static_cast<size_t>((h * sq + i) * d + e)]) *
                       k[static_cast<size_t>((h * sk + j) * d + e)];
              }
              scores.push_back(dot / 2 - static_cast<double>(custom[h]) *
                                             std::abs(static_cast<double>(q_pos - j)));
            }
            const std::vector<double> p = Softmax(scores);
            for (int64_t j = 0; j < static_cast<int64_t>(p.size()); ++j) {
              EXPECT_NEAR(got->probs->values()[static_cast<size_t>((h * sq + i) * sk + j)],
                          p[static_cast<size_t>(j)], 1e-6)
                  << "engine " << static_cast<int>(engine) << " offset " << query_offset
                  << " causal " << causal << " " << h << "," << i << "," << j;
            }
          }
        }
      }
    }
  }
}

TEST(AlibiTest, DefaultSlopesEqualSendingGetSlopes) {
  std::mt19937 rng(38);
  RandomCase c;
  c.method = MethodKind::kAlibi;
  c.heads = 5;
  c.sq = 6;
  c.sk = 9;
  c.d = 8;
  const kernels::AttendArgs plain = RandomAttendArgs(c, rng);
  kernels::AttendArgs sent = plain;
  const std::vector<double> slopes = ReferenceAlibiSlopes(5);
  sent.inputs["slopes"] = Tensor({5}, std::vector<float>(slopes.begin(), slopes.end()));
  auto a = kernels::Attend(plain, {});
  auto b = kernels::Attend(sent, {});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->out.values(), b->out.values());
}

// attention-variants.md 7: `slopes` of the wrong length or with a NaN or an
// infinity is INVALID_ARGUMENT naming slopes (and the index), in Attend and
// Encode, also when the caller vouched for its inputs (the server's
// inputs_checked: convert.cc's scan names the field the same way).
TEST(AlibiTest, BadSlopesAreInvalidAndNamed) {
  const float inf = std::numeric_limits<float>::infinity();
  const struct {
    Tensor slopes;
    std::string field;
  } cases[] = {
      {Tensor({3}, {1, 2, 3}), "slopes: must be [H=2]"},
      {Tensor({1}, {1}), "slopes: must be [H=2]"},
      {Tensor({2, 1}, {1, 2}), "slopes: must be [H=2]"},
      {Tensor({2}, {0.5f, inf}), "slopes.data[1]"},
      {Tensor({2}, {-inf, 0.5f}), "slopes.data[0]"},
      {Tensor({2}, {std::nanf(""), 0.5f}), "slopes.data[0]"},
  };
  for (const auto& c : cases) {
    for (const bool checked : {false, true}) {
      kernels::ComputeOptions options;
      options.inputs_checked = checked;
      kernels::EncodeArgs encode = AlibiEncode(2, 2, 3);
      encode.inputs["slopes"] = c.slopes;
      const absl::Status e = kernels::Encode(encode, options).status();
      EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument) << e;
      EXPECT_THAT(std::string(e.message()), ::testing::HasSubstr(c.field));
      kernels::AttendArgs attend;
      attend.method = MethodKind::kAlibi;
      attend.inputs["q"] = Tensor({1, 2, 2, 2}, std::vector<float>(8, 0.5f));
      attend.inputs["k"] = Tensor({1, 2, 3, 2}, std::vector<float>(12, 0.25f));
      attend.inputs["v"] = Tensor({1, 2, 3, 2}, std::vector<float>(12, 1.0f));
      attend.inputs["slopes"] = c.slopes;
      for (const kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
        options.engine = engine;
        const absl::Status a = kernels::Attend(attend, options).status();
        EXPECT_EQ(a.code(), absl::StatusCode::kInvalidArgument) << a;
        EXPECT_THAT(std::string(a.message()), ::testing::HasSubstr(c.field));
      }
    }
  }
}

TEST(AlibiTest, SlopesAreNotAnInputOfOtherMethods) {
  kernels::AttendArgs attend;
  attend.method = MethodKind::kNone;
  attend.inputs["q"] = Tensor({1, 1, 1, 2}, {1, 2});
  attend.inputs["k"] = Tensor({1, 1, 1, 2}, {1, 2});
  attend.inputs["v"] = Tensor({1, 1, 1, 2}, {1, 2});
  attend.inputs["slopes"] = Tensor({1}, {1});
  const absl::Status status = kernels::Attend(attend, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("slopes: not an input"));
}

TEST(AlibiTest, ListMethodsDescribesSlopes) {
  for (const kernels::MethodInfo& method : kernels::DescribeMethods()) {
    if (method.kind != MethodKind::kAlibi) continue;
    bool found = false;
    for (const kernels::ParameterInfo& param : method.parameters) {
      if (param.name != "slopes") continue;
      found = true;
      EXPECT_EQ(param.type, "tensor");
      EXPECT_EQ(param.ops, (std::vector<std::string>{"encode", "attend"}));
      EXPECT_THAT(param.rule, ::testing::HasSubstr("[H]"));
    }
    EXPECT_TRUE(found);
  }
}

}  // namespace
}  // namespace attnserve::testing
