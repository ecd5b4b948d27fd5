// Learned absolute table (positional-methods.md 2.3): lookups, the
// OUT_OF_RANGE boundary, and INVALID_ARGUMENT winning when both are broken.
#include <cmath>
#include <cstdint>
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

kernels::EncodeArgs LearnedEncode(int64_t seq, int64_t d_model, int64_t max_len, int64_t offset,
                                  uint32_t seed = 41) {
  std::mt19937 rng(seed);
  kernels::EncodeArgs args;
  args.method = MethodKind::kLearned;
  args.offset = offset;
  args.inputs["x"] = RandomTensor({2, seq, d_model}, rng);
  args.inputs["table"] = RandomTensor({max_len, d_model}, rng);
  return args;
}

// x_q [1, sq, 4], x_kv [1, sk, 4], one head of D = Dv = 4, table [max_len, 4].
kernels::AttendArgs LearnedAttend(int64_t sq, int64_t sk, int64_t max_len,
                                  std::optional<int64_t> query_offset) {
  RandomCase c;
  c.method = MethodKind::kLearned;
  c.sq = sq;
  c.sk = sk;
  c.d = c.dv = c.d_model = 4;
  c.query_offset = query_offset;
  std::mt19937 rng(42);
  kernels::AttendArgs args = RandomAttendArgs(c, rng);
  args.inputs["table"] = RandomTensor({max_len, 4}, rng);
  return args;
}

// The kernel's code, after checking that the reference agrees.
absl::StatusCode EncodeCode(const kernels::EncodeArgs& args) {
  const absl::StatusCode code = kernels::Encode(args, {}).status().code();
  EXPECT_EQ(ReferenceEncode(args).status().code(), code) << "reference disagrees";
  return code;
}
absl::StatusCode AttendCode(const kernels::AttendArgs& args) {
  const absl::StatusCode code = kernels::Attend(args, {}).status().code();
  EXPECT_EQ(ReferenceAttend(args).status().code(), code) << "reference disagrees";
  return code;
}

TEST(LearnedTest, EncodeAddsTableRowsFromTheOffset) {
  const kernels::EncodeArgs args = LearnedEncode(2, 3, 6, 3);
  auto got = kernels::Encode(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->outputs.size(), 1u);  // Only y (3.2).
  const absl::Span<const float> y = got->outputs.at("y").values();
  const absl::Span<const float> x = args.inputs.at("x").values();
  const absl::Span<const float> table = args.inputs.at("table").values();
  for (size_t b = 0; b < 2; ++b) {
    for (size_t s = 0; s < 2; ++s) {
      for (size_t c = 0; c < 3; ++c) {
        EXPECT_EQ(y[(b * 2 + s) * 3 + c], x[(b * 2 + s) * 3 + c] + table[(3 + s) * 3 + c]);
      }
    }
  }
}

TEST(LearnedTest, EncodeLastRowFitsOneMoreIsOutOfRange) {
  EXPECT_EQ(EncodeCode(LearnedEncode(2, 3, 5, 3)), absl::StatusCode::kOk);  // rows 3, 4
  EXPECT_EQ(EncodeCode(LearnedEncode(2, 3, 5, 4)), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(EncodeCode(LearnedEncode(5, 3, 5, 0)), absl::StatusCode::kOk);
  EXPECT_EQ(EncodeCode(LearnedEncode(6, 3, 5, 0)), absl::StatusCode::kOutOfRange);
  // api.md: a negative offset is a position outside the table for learned.
  EXPECT_EQ(EncodeCode(LearnedEncode(2, 3, 5, -1)), absl::StatusCode::kOutOfRange);
}

TEST(LearnedTest, AttendLastPositionFitsOneMoreIsOutOfRange) {
  // query_offset + Sq <= max_len and Sk <= max_len.
  EXPECT_EQ(AttendCode(LearnedAttend(2, 3, 6, 4)), absl::StatusCode::kOk);
  EXPECT_EQ(AttendCode(LearnedAttend(2, 3, 6, 5)), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(AttendCode(LearnedAttend(2, 6, 6, std::nullopt)), absl::StatusCode::kOk);
  EXPECT_EQ(AttendCode(LearnedAttend(1, 7, 6, 0)), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(AttendCode(LearnedAttend(3, 2, 6, 3)), absl::StatusCode::kOk);  // Sq > Sk
}

TEST(LearnedTest, InvalidArgumentWinsOverOutOfRange) {
  // Encode: table width != d_model, and the rows overrun too.
  kernels::EncodeArgs encode = LearnedEncode(4, 3, 2, 1);
  std::mt19937 rng(43);
  encode.inputs["table"] = RandomTensor({2, 5}, rng);
  EXPECT_EQ(EncodeCode(encode), absl::StatusCode::kInvalidArgument);

  // Attend: every one of these also overruns the 3-row table.
  kernels::AttendArgs width = LearnedAttend(2, 5, 3, 4);
  width.inputs["table"] = RandomTensor({3, 6}, rng);
  EXPECT_EQ(AttendCode(width), absl::StatusCode::kInvalidArgument);

  kernels::AttendArgs w_k = LearnedAttend(2, 5, 3, 4);
  w_k.inputs["w_k"] = RandomTensor({4, 8}, rng);
  EXPECT_EQ(AttendCode(w_k), absl::StatusCode::kInvalidArgument);

  kernels::AttendArgs heads = LearnedAttend(2, 5, 3, 4);
  heads.num_heads = 0;
  EXPECT_EQ(AttendCode(heads), absl::StatusCode::kInvalidArgument);

  kernels::AttendArgs scale = LearnedAttend(2, 5, 3, 4);
  scale.scale = std::nan("");
  EXPECT_EQ(AttendCode(scale), absl::StatusCode::kInvalidArgument);

  kernels::AttendArgs negative = LearnedAttend(2, 5, 3, -1);
  EXPECT_EQ(AttendCode(negative), absl::StatusCode::kInvalidArgument);

  kernels::AttendArgs default_negative = LearnedAttend(4, 2, 3, std::nullopt);
  EXPECT_EQ(AttendCode(default_negative), absl::StatusCode::kInvalidArgument);

  kernels::AttendArgs extra = LearnedAttend(2, 5, 3, 4);
  extra.inputs["q"] = RandomTensor({1, 1, 2, 4}, rng);
  EXPECT_EQ(AttendCode(extra), absl::StatusCode::kInvalidArgument);
}

TEST(LearnedTest, AttendUsesTableRowsAsThePositions) {
  // x = 0, identity weights (d_model = D = 2): q = table[q_pos], k = v = table[j].
  kernels::AttendArgs args;
  args.method = MethodKind::kLearned;
  args.num_heads = 1;
  args.inputs["x_q"] = Tensor({1, 1, 2}, {0, 0});
  args.inputs["x_kv"] = Tensor({1, 3, 2}, std::vector<float>(6, 0.0f));
  for (const char* w : {"w_q", "w_k", "w_v"}) args.inputs[w] = Tensor({2, 2}, {1, 0, 0, 1});
  args.inputs["table"] = Tensor({4, 2}, {1, 0, 0, 1, 1, 1, 2, 0});
  args.query_offset = 3;  // q = (2, 0)
  args.return_probs = true;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  // scores (2, 0, 2) / sqrt(2).
  const double e = std::exp(2 / std::sqrt(2.0));
  const double p[] = {e / (2 * e + 1), 1 / (2 * e + 1), e / (2 * e + 1)};
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(got->probs->values()[j], p[j], 1e-6) << j;
  EXPECT_NEAR(got->out.values()[0], p[0] * 1 + p[2] * 1, 1e-6);
  EXPECT_NEAR(got->out.values()[1], p[1] * 1 + p[2] * 1, 1e-6);
}

}  // namespace
}  // namespace attnserve::testing
