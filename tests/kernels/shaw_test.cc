// Shaw relative positions (positional-methods.md 2.6): index clipping, K = 0,
// K beyond the sequence, both table terms, and table-size rules.
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

kernels::EncodeArgs ShawEncode(int64_t sq, int64_t sk, int64_t k,
                               std::optional<int64_t> query_offset, int64_t d = 2) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kShaw;
  args.sq = sq;
  args.sk = sk;
  args.query_offset = query_offset;
  args.params.max_relative_position = k;
  std::vector<float> rows;
  for (int64_t r = 0; r < 2 * k + 1; ++r) {
    for (int64_t e = 0; e < d; ++e) rows.push_back(static_cast<float>(10 * r + e));
  }
  args.inputs["rel_k"] = Tensor({2 * k + 1, d}, rows);
  return args;
}

std::vector<float> Indices(const kernels::EncodeArgs& args) {
  auto got = kernels::Encode(args, {});
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return {};
  // rel_k_gathered[i, j] = rel_k[idx] (row r holds 10r, 10r + 1).
  const absl::Span<const float> index = got->outputs.at("rel_index").values();
  const absl::Span<const float> gathered = got->outputs.at("rel_k_gathered").values();
  for (size_t n = 0; n < index.size(); ++n) {
    EXPECT_EQ(gathered[2 * n], 10 * index[n]);
    EXPECT_EQ(gathered[2 * n + 1], 10 * index[n] + 1);
  }
  auto ref = ReferenceEncode(args);
  EXPECT_TRUE(ref.ok()) << ref.status();
  if (ref.ok()) {
    EXPECT_EQ(ref->at("rel_index").data, std::vector<double>(index.begin(), index.end()));
  }
  return std::vector<float>(index.begin(), index.end());
}

TEST(ShawTest, EncodeClipsKeyMinusQueryAtK) {
  // Query at position 3, keys 0..6, K = 2: a = j - 3 clipped to [-2, 2].
  EXPECT_EQ(Indices(ShawEncode(1, 7, 2, 3)), (std::vector<float>{0, 0, 1, 2, 3, 4, 4}));
}

TEST(ShawTest, EncodeDefaultOffsetAlignsQueriesToTheLastKeys) {
  // Sq = 2, Sk = 4: queries at 2 and 3; K = 1.
  EXPECT_EQ(Indices(ShawEncode(2, 4, 1, std::nullopt)),
            (std::vector<float>{0, 0, 1, 2, 0, 0, 0, 1}));
}

TEST(ShawTest, KLargerThanTheSequenceNeverClips) {
  const std::vector<float> index = Indices(ShawEncode(3, 3, 10, std::nullopt));
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) EXPECT_EQ(index[i * 3 + j], j - i + 10) << i << "," << j;
  }
}

TEST(ShawTest, KZeroUsesOneRowForEveryPair) {
  EXPECT_EQ(Indices(ShawEncode(2, 3, 0, 0)), std::vector<float>(6, 0.0f));
  // Attend with K = 0 is `none` attention on k + rel_k[0] and v + rel_v[0].
  RandomCase c;
  c.method = MethodKind::kShaw;
  c.max_relative_position = 0;
  c.heads = 2;
  c.sq = c.sk = 5;
  c.d = 4;
  c.dv = 3;
  c.causal = true;
  std::mt19937 rng(51);
  const kernels::AttendArgs shaw = RandomAttendArgs(c, rng);
  kernels::AttendArgs none = shaw;
  none.method = MethodKind::kNone;
  none.params.max_relative_position.reset();
  none.inputs.erase("rel_k");
  none.inputs.erase("rel_v");
  for (const auto& [name, table] : {std::pair<std::string, std::string>{"k", "rel_k"},
                                    std::pair<std::string, std::string>{"v", "rel_v"}}) {
    absl::Span<float> values = none.inputs.at(name).values();
    const absl::Span<const float> row = shaw.inputs.at(table).values();
    for (size_t n = 0; n < values.size(); ++n) values[n] += row[n % row.size()];
  }
  auto a = kernels::Attend(shaw, {});
  auto b = kernels::Attend(none, {});
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t n = 0; n < a->out.values().size(); ++n) {
    EXPECT_NEAR(a->out.values()[n], b->out.values()[n], 1e-5) << n;
  }
  for (size_t n = 0; n < a->probs->values().size(); ++n) {
    EXPECT_NEAR(a->probs->values()[n], b->probs->values()[n], 1e-6) << n;
  }
}

TEST(ShawTest, ScoreAddsQueryDotRelKAndTheScaleMultipliesBoth) {
  // q = (1, 0); k_0 = (1, 0), k_1 = k_2 = 0; rel_k rows (0,0), (1,0), (2,0);
  // query at position 1, K = 1: rows 0, 1, 2 for keys 0, 1, 2.
  kernels::AttendArgs args;
  args.method = MethodKind::kShaw;
  args.params.max_relative_position = 1;
  args.inputs["q"] = Tensor({1, 1, 1, 2}, {1, 0});
  args.inputs["k"] = Tensor({1, 1, 3, 2}, {1, 0, 0, 0, 0, 0});
  args.inputs["v"] = Tensor({1, 1, 3, 1}, {0, 0, 0});
  args.inputs["rel_k"] = Tensor({3, 2}, {0, 0, 1, 0, 2, 0});
  args.inputs["rel_v"] = Tensor({3, 1}, {0, 0, 0});
  args.query_offset = 1;
  args.scale = 2.0;
  args.return_probs = true;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  // scores 2 * (1 + 0), 2 * (0 + 1), 2 * (0 + 2) = 2, 2, 4.
  const double sum = 2 * std::exp(-2.0) + 1;
  EXPECT_NEAR(got->probs->values()[0], std::exp(-2.0) / sum, 1e-6);
  EXPECT_NEAR(got->probs->values()[1], std::exp(-2.0) / sum, 1e-6);
  EXPECT_NEAR(got->probs->values()[2], 1 / sum, 1e-6);
}

TEST(ShawTest, ValueTermAddsRelVWeightedByTheProbabilities) {
  // q = 0: uniform probabilities. Query at position 2, K = 1: keys 0, 1, 2
  // use rows 0, 0, 1 of rel_v.
  kernels::AttendArgs args;
  args.method = MethodKind::kShaw;
  args.params.max_relative_position = 1;
  args.inputs["q"] = Tensor({1, 1, 1, 2}, {0, 0});
  args.inputs["k"] = Tensor({1, 1, 3, 2}, {1, 2, 3, 4, 5, 6});
  args.inputs["v"] = Tensor({1, 1, 3, 2}, {3, 0, 0, 0, 0, 3});
  args.inputs["rel_k"] = Tensor({3, 2}, {9, 9, 9, 9, 9, 9});
  args.inputs["rel_v"] = Tensor({3, 2}, {1, 0, 0, 1, 5, 5});
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  // mean of v = (1, 1); mean of rel_v rows 0, 0, 1 = (2/3, 1/3).
  EXPECT_NEAR(got->out.values()[0], 1 + 2.0 / 3, 1e-6);
  EXPECT_NEAR(got->out.values()[1], 1 + 1.0 / 3, 1e-6);
}

TEST(ShawTest, TablesOfTheWrongSizeAreInvalid) {
  RandomCase c;
  c.method = MethodKind::kShaw;
  c.max_relative_position = 2;
  c.d = 4;
  c.dv = 3;
  std::mt19937 rng(52);
  const kernels::AttendArgs good = RandomAttendArgs(c, rng);
  ASSERT_TRUE(kernels::Attend(good, {}).ok());
  const struct {
    const char* name;
    std::vector<int64_t> shape;
  } bad[] = {{"rel_k", {4, 4}}, {"rel_k", {5, 3}}, {"rel_v", {6, 3}}, {"rel_v", {5, 4}},
             {"rel_k", {5, 4, 1}}};
  for (const auto& b : bad) {
    kernels::AttendArgs args = good;
    args.inputs[b.name] = RandomTensor(b.shape, rng);
    auto got = kernels::Attend(args, {});
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << b.name;
    EXPECT_NE(got.status().message().find(b.name), absl::string_view::npos) << got.status();
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  for (std::optional<int64_t> k : {std::optional<int64_t>(), std::optional<int64_t>(-1)}) {
    kernels::AttendArgs args = good;
    args.params.max_relative_position = k;
    EXPECT_EQ(kernels::Attend(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  kernels::EncodeArgs encode = ShawEncode(2, 3, 2, std::nullopt);
  encode.inputs["rel_k"] = RandomTensor({4, 2}, rng);
  EXPECT_EQ(kernels::Encode(encode, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceEncode(encode).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShawTest, EncodeRejectsBadSizesAndOffsets) {
  for (const kernels::EncodeArgs& args :
       {ShawEncode(0, 3, 1, std::nullopt), ShawEncode(2, 0, 1, 0), ShawEncode(4, 3, 1, std::nullopt),
        ShawEncode(2, 3, 1, -1)}) {
    EXPECT_EQ(kernels::Encode(args, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << args.sq << " " << args.sk;
    EXPECT_EQ(ReferenceEncode(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace attnserve::testing
