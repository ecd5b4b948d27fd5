// Transformer-XL (positional-methods.md 2.5): the concatenated sin | cos
// relative sinusoid, W_R projection, the four score terms under one scale,
// memory via query_offset, negative distances, and the shape rules.
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

kernels::EncodeArgs TxlEncode(std::vector<float> distances, int64_t d_rel,
                              std::optional<Tensor> w_r = std::nullopt) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kTransformerXL;
  args.params.d_rel = d_rel;
  const int64_t n = static_cast<int64_t>(distances.size());
  args.inputs["distances"] = Tensor({n}, std::move(distances));
  if (w_r) args.inputs["w_r"] = *w_r;
  return args;
}

TEST(TransformerXlTest, EncodeTableIsAllSinesThenAllCosines) {
  // d_rel = 4: f = (1, 10000^(-1/2) = 0.01); R(r) = (sin r, sin r/100, cos r, cos r/100).
  auto got = kernels::Encode(TxlEncode({2, -3, 0.5f}, 4), {});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->outputs.count("rel_proj"), 0u);
  const Tensor& table = got->outputs.at("rel_table");
  ASSERT_EQ(table.shape(), (std::vector<int64_t>{3, 4}));
  const double r[] = {2, -3, 0.5};
  for (int n = 0; n < 3; ++n) {
    EXPECT_NEAR(table.values()[n * 4 + 0], std::sin(r[n]), 1e-7) << r[n];
    EXPECT_NEAR(table.values()[n * 4 + 1], std::sin(r[n] / 100), 1e-7) << r[n];
    EXPECT_NEAR(table.values()[n * 4 + 2], std::cos(r[n]), 1e-7) << r[n];
    EXPECT_NEAR(table.values()[n * 4 + 3], std::cos(r[n] / 100), 1e-7) << r[n];
  }
  // The reference's layout is the same (and not the interleaved one of 2.2).
  const std::vector<double> ref = ReferenceRelativeSinusoid(2, 4, 10000);
  EXPECT_DOUBLE_EQ(ref[1], std::sin(0.02));
  EXPECT_DOUBLE_EQ(ref[2], std::cos(2.0));
}

TEST(TransformerXlTest, EncodeProjectsEachHeadWithWr) {
  // d_rel = 2 (R = (sin r, cos r)); head 0: w_r = [[1, 0, 2], [0, 1, 0]],
  // head 1: all ones, so rel_1 = sin r + cos r in every column.
  const Tensor w_r({2, 2, 3}, {1, 0, 2, 0, 1, 0, 1, 1, 1, 1, 1, 1});
  auto got = kernels::Encode(TxlEncode({1, -2}, 2, w_r), {});
  ASSERT_TRUE(got.ok()) << got.status();
  const Tensor& proj = got->outputs.at("rel_proj");
  ASSERT_EQ(proj.shape(), (std::vector<int64_t>{2, 2, 3}));
  const double r[] = {1, -2};
  for (int n = 0; n < 2; ++n) {
    const double s = std::sin(r[n]), c = std::cos(r[n]);
    EXPECT_NEAR(proj.values()[n * 3 + 0], s, 1e-6);
    EXPECT_NEAR(proj.values()[n * 3 + 1], c, 1e-6);
    EXPECT_NEAR(proj.values()[n * 3 + 2], 2 * s, 1e-6);
    for (int e = 0; e < 3; ++e) EXPECT_NEAR(proj.values()[6 + n * 3 + e], s + c, 1e-6);
  }
}

// H = 1, D = 2, d_rel = 2 with w_r = identity: rel(delta) = (sin delta, cos delta).
kernels::AttendArgs TinyAttend(std::vector<float> q, std::vector<float> k, std::vector<float> u,
                               std::vector<float> v_bias, int64_t sk) {
  kernels::AttendArgs args;
  args.method = MethodKind::kTransformerXL;
  args.params.d_rel = 2;
  args.inputs["q"] = Tensor({1, 1, 1, 2}, std::move(q));
  args.inputs["k"] = Tensor({1, 1, sk, 2}, std::move(k));
  std::vector<float> v(static_cast<size_t>(sk));
  for (int64_t j = 0; j < sk; ++j) v[j] = static_cast<float>(j);
  args.inputs["v"] = Tensor({1, 1, sk, 1}, v);
  args.inputs["pos_bias_u"] = Tensor({1, 2}, std::move(u));
  args.inputs["pos_bias_v"] = Tensor({1, 2}, std::move(v_bias));
  args.inputs["w_r"] = Tensor({1, 2, 2}, {1, 0, 0, 1});
  args.return_probs = true;
  return args;
}

void ExpectSoftmax(const kernels::AttendResult& got, const std::vector<double>& scores) {
  double m = scores[0];
  for (double s : scores) m = std::max(m, s);
  double sum = 0;
  for (double s : scores) sum += std::exp(s - m);
  for (size_t j = 0; j < scores.size(); ++j) {
    EXPECT_NEAR(got.probs->values()[j], std::exp(scores[j] - m) / sum, 1e-6) << j;
  }
}

TEST(TransformerXlTest, ScoreIsScaleTimesContentPlusPositionTerms) {
  // q = 0: score = scale * (u . k_j + v . rel(delta)), query at position 2.
  kernels::AttendArgs args =
      TinyAttend({0, 0}, {1, 0, 0, 0, 2, 0}, /*u=*/{1, 0}, /*v=*/{1, 0}, 3);
  args.scale = 2.0;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  // deltas 2, 1, 0: 2 * (1 + sin 2), 2 * (0 + sin 1), 2 * (2 + 0).
  ExpectSoftmax(*got, {2 * (1 + std::sin(2.0)), 2 * std::sin(1.0), 2 * 2.0});

  // q enters both terms: q = (0, 1), u = v = 0, k = 0: score = scale * q . rel = cos(delta) / sqrt(2).
  args = TinyAttend({0, 1}, std::vector<float>(6, 0.0f), {0, 0}, {0, 0}, 3);
  got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const double s = 1 / std::sqrt(2.0);
  ExpectSoftmax(*got, {s * std::cos(2.0), s * std::cos(1.0), s * 1.0});
}

TEST(TransformerXlTest, NonCausalUsesNegativeDistances) {
  // Query at position 0 against keys 0, 1, 2: deltas 0, -1, -2.
  kernels::AttendArgs args = TinyAttend({0, 0}, std::vector<float>(6, 0.0f), {0, 0}, {1, 0}, 3);
  args.query_offset = 0;
  args.scale = 1.0;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSoftmax(*got, {0.0, std::sin(-1.0), std::sin(-2.0)});
}

TEST(TransformerXlTest, DefaultOffsetIsTheMemoryLengthAndMasksKeysAfterMlenPlusI) {
  RandomCase c;
  c.method = MethodKind::kTransformerXL;
  c.sq = 3;
  c.sk = 7;  // Memory of 4.
  c.causal = true;
  std::mt19937 rng(61);
  const kernels::AttendArgs args = RandomAttendArgs(c, rng);
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 7; ++j) {
      const float p = got->probs->values()[static_cast<size_t>(i * 7 + j)];
      if (j <= 4 + i) {
        EXPECT_GT(p, 0.0f) << i << "," << j;
      } else {
        EXPECT_EQ(p, 0.0f) << i << "," << j;
      }
    }
  }
  auto ref = ReferenceAttend(args);
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(CompareToReference("probs", *got->probs, ref->at("probs"), 1e-4, 1e-5), "");
}

TEST(TransformerXlTest, WrOfTheWrongShapeIsInvalid) {
  RandomCase c;
  c.method = MethodKind::kTransformerXL;
  c.heads = 2;
  c.d = 3;
  c.d_rel = 4;
  std::mt19937 rng(62);
  const kernels::AttendArgs good = RandomAttendArgs(c, rng);
  ASSERT_TRUE(kernels::Attend(good, {}).ok());
  for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{
           {2, 6, 3}, {2, 4, 4}, {3, 4, 3}, {4, 3}, {2, 2, 3}}) {
    kernels::AttendArgs args = good;
    args.inputs["w_r"] = RandomTensor(shape, rng);
    auto got = kernels::Attend(args, {});
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << shape.size();
    EXPECT_NE(got.status().message().find("w_r"), absl::string_view::npos) << got.status();
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  for (const char* name : {"pos_bias_u", "pos_bias_v"}) {
    kernels::AttendArgs args = good;
    args.inputs[name] = RandomTensor({2, 4}, rng);  // D is 3.
    auto got = kernels::Attend(args, {});
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_NE(got.status().message().find(name), absl::string_view::npos) << got.status();
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Encode: w_r's second dimension must be d_rel; H and D are free.
  const kernels::EncodeArgs encode = TxlEncode({1, 2}, 4, RandomTensor({1, 6, 3}, rng));
  EXPECT_EQ(kernels::Encode(encode, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceEncode(encode).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(kernels::Encode(TxlEncode({1, 2}, 4, RandomTensor({5, 4, 7}, rng)), {}).ok());
}

TEST(TransformerXlTest, DRelMustBeEvenAndAtLeastTwo) {
  for (int64_t d_rel : {-2, 0, 1, 3, 7}) {
    const kernels::EncodeArgs encode = TxlEncode({1, 2}, d_rel);
    EXPECT_EQ(kernels::Encode(encode, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << d_rel;
    EXPECT_EQ(ReferenceEncode(encode).status().code(), absl::StatusCode::kInvalidArgument);
    kernels::AttendArgs attend = TinyAttend({0, 0}, {0, 0}, {0, 0}, {0, 0}, 1);
    attend.params.d_rel = d_rel;
    EXPECT_EQ(kernels::Attend(attend, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << d_rel;
    EXPECT_EQ(ReferenceAttend(attend).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(kernels::Encode(TxlEncode({1, 2}, 2), {}).ok());
}

}  // namespace
}  // namespace attnserve::testing
