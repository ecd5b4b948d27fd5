// The rules every method shares (positional-methods.md section 1, api.md
// "Which inputs an op takes" and "Status codes"), checked on the kernels'
// Attend/Encode and, where the reference validates too, on the reference.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/isa.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;
using ::testing::HasSubstr;

// A small request of `method` with the geometry of `c` (method overwritten).
kernels::AttendArgs Request(MethodKind method, RandomCase c, uint32_t seed = 7) {
  c.method = method;
  if (method == MethodKind::kRope && c.d % 2 != 0) c.d += 1;
  std::mt19937 rng(seed);
  return RandomAttendArgs(c, rng);
}

absl::StatusOr<kernels::AttendResult> AttendOnce(const kernels::AttendArgs& args,
                                          const kernels::ComputeOptions& options = {}) {
  return kernels::Attend(args, options);
}

std::string Name(MethodKind method) { return std::string(kernels::MethodName(method)); }

TEST(AttentionTest, NegativeExplicitQueryOffsetIsInvalidForEveryMethod) {
  RandomCase c;
  c.query_offset = -1;
  for (MethodKind method : kernels::kAllMethods) {
    const kernels::AttendArgs args = Request(method, c);
    auto got = AttendOnce(args);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << Name(method);
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("query_offset")) << Name(method);
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument)
        << Name(method);
  }
}

// Regression: query_offset near INT64_MAX overflowed query_offset + i.
TEST(AttentionTest, QueryOffsetAbove2To53IsInvalidForEveryMethod) {
  RandomCase c;
  c.query_offset = std::numeric_limits<int64_t>::max() - 1;
  for (MethodKind method : kernels::kAllMethods) {
    auto got = AttendOnce(Request(method, c));
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << Name(method);
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("query_offset")) << Name(method);
  }
  c.query_offset = int64_t{1} << 53;  // The bound itself is allowed.
  EXPECT_TRUE(AttendOnce(Request(MethodKind::kAlibi, c)).ok());
}

TEST(AttentionTest, DefaultQueryOffsetIsInvalidWhenSqExceedsSk) {
  RandomCase c;
  c.sq = 5;
  c.sk = 3;
  for (MethodKind method : kernels::kAllMethods) {
    const kernels::AttendArgs args = Request(method, c);
    EXPECT_EQ(AttendOnce(args).status().code(), absl::StatusCode::kInvalidArgument) << Name(method);
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument)
        << Name(method);
    // The same request with an explicit offset is fine.
    kernels::AttendArgs with_offset = args;
    with_offset.query_offset = 0;
    EXPECT_TRUE(AttendOnce(with_offset).ok()) << Name(method) << ": " << AttendOnce(with_offset).status();
  }
}

TEST(AttentionTest, DefaultQueryOffsetIsSkMinusSq) {
  RandomCase c;
  c.sq = 2;
  c.sk = 7;
  c.causal = true;
  for (MethodKind method : kernels::kAllMethods) {
    const kernels::AttendArgs by_default = Request(method, c);
    kernels::AttendArgs explicit_offset = by_default;
    explicit_offset.query_offset = 5;
    kernels::AttendArgs other_offset = by_default;
    other_offset.query_offset = 3;
    auto a = AttendOnce(by_default);
    auto b = AttendOnce(explicit_offset);
    auto other = AttendOnce(other_offset);
    ASSERT_TRUE(a.ok() && b.ok() && other.ok()) << Name(method);
    EXPECT_EQ(a->probs->values(), b->probs->values()) << Name(method);
    EXPECT_EQ(a->out.values(), b->out.values()) << Name(method);
    // And it matters: offset 3 masks keys 4.. of query 0, offset 5 does not.
    EXPECT_NE(a->probs->values(), other->probs->values()) << Name(method);
    EXPECT_GT(a->probs->values()[5], 0.0f) << Name(method);
  }
}

TEST(AttentionTest, CausallyMaskedEntriesHaveExactlyZeroProbability) {
  RandomCase c;
  c.batch = 2;
  c.heads = 2;
  c.sq = 4;
  c.sk = 6;
  c.query_offset = 1;
  c.causal = true;
  for (MethodKind method : kernels::kAllMethods) {
    auto got = AttendOnce(Request(method, c));
    ASSERT_TRUE(got.ok()) << Name(method) << ": " << got.status();
    const absl::Span<const float> p = got->probs->values();
    for (int64_t row = 0; row < c.batch * c.heads * c.sq; ++row) {
      const int64_t q_pos = 1 + row % c.sq;
      double sum = 0;
      for (int64_t j = 0; j < c.sk; ++j) {
        const float value = p[static_cast<size_t>(row * c.sk + j)];
        if (j > q_pos) {
          EXPECT_EQ(value, 0.0f) << Name(method) << " row " << row << " key " << j;
        } else {
          EXPECT_GT(value, 0.0f) << Name(method) << " row " << row << " key " << j;
        }
        sum += value;
      }
      EXPECT_NEAR(sum, 1.0, 1e-6) << Name(method) << " row " << row;
    }
  }
}

TEST(AttentionTest, KeyZeroIsNeverMaskedSoTheFirstQueryAttendsOnlyToIt) {
  RandomCase c;
  c.sq = 3;
  c.sk = 3;
  c.query_offset = 0;
  c.causal = true;
  for (MethodKind method : kernels::kAllMethods) {
    const kernels::AttendArgs args = Request(method, c);
    auto got = AttendOnce(args);
    ASSERT_TRUE(got.ok()) << Name(method) << ": " << got.status();
    const absl::Span<const float> p = got->probs->values();
    EXPECT_EQ(p[0], 1.0f) << Name(method);
    EXPECT_EQ(p[1], 0.0f) << Name(method);
    EXPECT_EQ(p[2], 0.0f) << Name(method);
    // out of query 0 is then the value of key 0 (plus Shaw's rel_v term).
    auto ref = ReferenceAttend(args);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(CompareToReference("out", got->out, ref->at("out"), 1e-5, 1e-6), "")
        << Name(method);
  }
}

TEST(AttentionTest, NonFiniteScaleIsInvalid) {
  for (double scale : {std::nan(""), std::numeric_limits<double>::infinity(),
                       -std::numeric_limits<double>::infinity()}) {
    RandomCase c;
    c.scale = scale;
    for (MethodKind method : kernels::kAllMethods) {
      const kernels::AttendArgs args = Request(method, c);
      auto got = AttendOnce(args);
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
          << Name(method) << " scale=" << scale;
      EXPECT_THAT(std::string(got.status().message()), HasSubstr("scale")) << Name(method);
      EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(AttentionTest, DefaultScaleIsOneOverSqrtD) {
  RandomCase c;
  c.d = 6;
  for (MethodKind method : kernels::kAllMethods) {
    const kernels::AttendArgs by_default = Request(method, c);
    kernels::AttendArgs explicit_scale = by_default;
    explicit_scale.scale = 1 / std::sqrt(6.0);
    kernels::AttendArgs other_scale = by_default;
    other_scale.scale = 1.0;
    auto a = AttendOnce(by_default);
    auto b = AttendOnce(explicit_scale);
    auto other = AttendOnce(other_scale);
    ASSERT_TRUE(a.ok() && b.ok() && other.ok()) << Name(method);
    EXPECT_EQ(a->probs->values(), b->probs->values()) << Name(method);
    EXPECT_NE(a->probs->values(), other->probs->values()) << Name(method);
  }
}

TEST(AttentionTest, ExtraInputIsRejectedWithAMessageNamingIt) {
  RandomCase c;
  kernels::AttendArgs rope = Request(MethodKind::kRope, c);
  rope.inputs["x_q"] = Tensor({1, 4, 8}, std::vector<float>(32, 0.0f));
  auto got = AttendOnce(rope);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("x_q"));
  auto ref = ReferenceAttend(rope);
  EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ref.status().message()), HasSubstr("x_q"));

  kernels::AttendArgs alibi = Request(MethodKind::kAlibi, c);
  alibi.inputs["rel_k"] = Tensor({1, 8}, std::vector<float>(8, 0.0f));
  got = AttendOnce(alibi);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("rel_k"));

  kernels::EncodeArgs shaw;
  shaw.method = MethodKind::kShaw;
  shaw.params.max_relative_position = 1;
  shaw.sq = shaw.sk = 2;
  shaw.inputs["rel_k"] = Tensor({3, 2}, std::vector<float>(6, 0.5f));
  ASSERT_TRUE(kernels::Encode(shaw, {}).ok());
  shaw.inputs["rel_v"] = Tensor({3, 2}, std::vector<float>(6, 0.5f));
  auto encoded = kernels::Encode(shaw, {});
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(encoded.status().message()), HasSubstr("rel_v"));
  EXPECT_EQ(ReferenceEncode(shaw).status().code(), absl::StatusCode::kInvalidArgument);

  kernels::EncodeArgs txl;
  txl.method = MethodKind::kTransformerXL;
  txl.params.d_rel = 4;
  txl.inputs["distances"] = Tensor({2}, {1.0f, 2.0f});
  ASSERT_TRUE(kernels::Encode(txl, {}).ok());
  txl.inputs["pos_bias_u"] = Tensor({1, 2}, {0.0f, 0.0f});
  encoded = kernels::Encode(txl, {});
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(encoded.status().message()), HasSubstr("pos_bias_u"));
}

TEST(AttentionTest, MissingInputIsInvalidNamingIt) {
  RandomCase c;
  const struct {
    MethodKind method;
    const char* input;
  } cases[] = {{MethodKind::kNone, "v"},
               {MethodKind::kSinusoidal, "w_k"},
               {MethodKind::kLearned, "table"},
               {MethodKind::kTransformerXL, "w_r"},
               {MethodKind::kShaw, "rel_v"},
               {MethodKind::kDaTransformer, "dist_v"}};
  for (const auto& test : cases) {
    kernels::AttendArgs args = Request(test.method, c);
    ASSERT_EQ(args.inputs.erase(test.input), 1u) << test.input;
    auto got = AttendOnce(args);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << test.input;
    EXPECT_THAT(std::string(got.status().message()), HasSubstr(test.input));
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(AttentionTest, NumHeadsMustBeUnsetOrEqualToH) {
  RandomCase c;
  c.heads = 2;
  for (MethodKind method : {MethodKind::kNone, MethodKind::kRope, MethodKind::kTransformerXL,
                            MethodKind::kShaw, MethodKind::kAlibi, MethodKind::kDaTransformer}) {
    kernels::AttendArgs args = Request(method, c);
    for (int64_t heads : {0, 2}) {
      args.num_heads = heads;
      EXPECT_TRUE(AttendOnce(args).ok()) << Name(method) << " num_heads=" << heads;
    }
    args.num_heads = 3;
    auto got = AttendOnce(args);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << Name(method);
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("num_heads"));
    EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // The absolute methods need it (>= 1, dividing the projection widths).
  for (MethodKind method : {MethodKind::kSinusoidal, MethodKind::kLearned}) {
    kernels::AttendArgs args = Request(method, c);
    for (int64_t heads : {0, 3}) {
      args.num_heads = heads;
      EXPECT_EQ(AttendOnce(args).status().code(), absl::StatusCode::kInvalidArgument)
          << Name(method) << " num_heads=" << heads;
      EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(AttentionTest, ShapeMismatchIsInvalidNamingTheField) {
  RandomCase c;
  kernels::AttendArgs args = Request(MethodKind::kNone, c);
  args.inputs["k"] = Tensor({1, 1, 4, 7}, std::vector<float>(28, 0.5f));
  auto got = AttendOnce(args);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("k.shape"));
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);

  args = Request(MethodKind::kNone, c);
  args.inputs["v"] = Tensor({1, 1, 5, 8}, std::vector<float>(40, 0.5f));  // Sk differs from k.
  got = AttendOnce(args);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("v.shape"));

  args = Request(MethodKind::kNone, c);
  args.inputs["q"] = Tensor({4, 8}, std::vector<float>(32, 0.5f));  // Rank 2.
  EXPECT_EQ(AttendOnce(args).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
}

bool IsAbsolute(MethodKind method) {
  return method == MethodKind::kSinusoidal || method == MethodKind::kLearned;
}

TEST(AttentionTest, NonFiniteInputIsInvalid) {
  RandomCase c;
  for (MethodKind method : kernels::kAllMethods) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity()}) {
      kernels::AttendArgs args = Request(method, c);
      const std::string name = IsAbsolute(method) ? "x_kv" : "k";
      args.inputs.at(name).values()[3] = bad;
      auto got = AttendOnce(args);
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << Name(method);
      EXPECT_THAT(std::string(got.status().message()), HasSubstr(name)) << Name(method);
      EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

// The fast engine checks q, k and v of the methods that keep them as it packs
// them (on its threads, per head and query block); the message must still
// name the first bad value exactly, wherever it sits and on either engine.
TEST(AttentionTest, NonFiniteQkvIsNamedExactlyOnEitherEngine) {
  RandomCase c;
  c.batch = 2;
  c.heads = 3;
  c.sq = 100;  // Two query blocks of the fast engine.
  c.sk = 130;
  c.d = 8;
  c.dv = 5;
  c.causal = true;
  for (MethodKind method : kernels::kAllMethods) {
    if (IsAbsolute(method)) continue;  // Their q, k, v are projections, not inputs.
    for (const std::string name : {"q", "k", "v"}) {
      const kernels::AttendArgs clean = Request(method, c);
      const int64_t size = clean.inputs.at(name).size();
      for (const int64_t n : {int64_t{0}, size / 2 + 1, size - 1}) {
        kernels::AttendArgs args = clean;
        absl::Span<float> values = args.inputs.at(name).values();
        values[static_cast<size_t>(n)] = -std::numeric_limits<float>::infinity();
        // A second bad value later in the same tensor must not be the one named.
        if (n + 7 < size) values[static_cast<size_t>(n + 7)] = std::nanf("");
        for (const kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
          kernels::ComputeOptions options;
          options.engine = engine;
          options.threads = 2;
          auto got = AttendOnce(args, options);
          EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << Name(method);
          EXPECT_EQ(got.status().message(),
                    absl::StrCat(name, ".data[", n, "]: must be finite, got -inf"))
              << Name(method) << " " << name << "[" << n << "]";
        }
      }
    }
  }
}

// Kernel tensors can be built without Tensor::Create; Attend still checks 1.1.
TEST(AttentionTest, ZeroSizedDimensionIsInvalid) {
  RandomCase c;
  for (MethodKind method : kernels::kAllMethods) {
    const std::vector<std::vector<std::string>> groups =
        IsAbsolute(method)
            ? std::vector<std::vector<std::string>>{{"x_q"}, {"x_kv"}}
            : std::vector<std::vector<std::string>>{{"q"}, {"k", "v"}};
    for (const std::vector<std::string>& names : groups) {
      kernels::AttendArgs args = Request(method, c);
      for (const std::string& name : names) {
        std::vector<int64_t> shape = args.inputs.at(name).shape();
        shape[shape.size() - 2] = 0;  // No queries, or no keys.
        args.inputs[name] = Tensor(shape, {});
      }
      EXPECT_EQ(AttendOnce(args).status().code(), absl::StatusCode::kInvalidArgument)
          << Name(method) << " " << names[0];
      EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(AttentionTest, DataNotMatchingTheShapeIsInvalid) {
  RandomCase c;
  kernels::AttendArgs args = Request(MethodKind::kNone, c);
  args.inputs["v"] = Tensor({1, 1, 4, 8}, std::vector<float>(31, 0.5f));
  auto got = AttendOnce(args);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("v.data"));
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AttentionTest, EncodeOfNoneIsInvalid) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kNone;
  EXPECT_EQ(kernels::Encode(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceEncode(args).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AttentionTest, OutputAboveMaxElementsIsResourceExhausted) {
  RandomCase c;
  c.sq = c.sk = 8;
  // out, projected q/k/v: 16 elements each; Transformer-XL's R table
  // [Sq+Sk-1=15, d_rel=2]: 30; probs: 64.
  c.d = c.dv = c.d_model = 2;
  c.d_rel = 2;
  for (MethodKind method : kernels::kAllMethods) {
    kernels::AttendArgs args = Request(method, c);
    kernels::ComputeOptions options;
    options.max_elements = 32;
    auto got = AttendOnce(args, options);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << Name(method);
    args.return_probs = false;
    EXPECT_TRUE(AttendOnce(args, options).ok()) << Name(method) << ": " << AttendOnce(args, options).status();
    options.max_elements = 8;
    EXPECT_EQ(AttendOnce(args, options).status().code(), absl::StatusCode::kResourceExhausted)
        << Name(method);
  }
}

TEST(AttentionTest, CancellationFlagStopsTheCallWithCancelled) {
  RandomCase c;
  c.sq = c.sk = 16;
  std::atomic<bool> cancelled{true};
  for (MethodKind method : kernels::kAllMethods) {
    for (int threads : {1, 2}) {
      kernels::ComputeOptions options;
      options.threads = threads;
      options.cancelled = &cancelled;
      auto got = AttendOnce(Request(method, c), options);
      EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled)
          << Name(method) << " threads=" << threads;
    }
  }
  std::atomic<bool> not_cancelled{false};
  kernels::ComputeOptions options;
  options.cancelled = &not_cancelled;
  EXPECT_TRUE(AttendOnce(Request(MethodKind::kNone, c), options).ok());
}

// The phases of AttendResult::timings are real, disjoint parts of the call:
// each positive, together no longer than the call timed from outside, with
// the input projections (learned, d_model = H*D = 512: the bench's widths)
// and without (none). Which phase is the longer is not asserted: that is a
// speed, the bench's to show, and its order changes on a loaded machine and
// under ASan (which instruments the engine and not oneDNN's projections).
TEST(AttentionTest, TimingsSplitTheCallIntoItsPhases) {
  RandomCase c;
  c.heads = 2;
  c.sq = c.sk = 128;
  c.d = c.dv = 256;
  c.d_model = 512;
  for (MethodKind method : {MethodKind::kLearned, MethodKind::kNone}) {
    kernels::ComputeOptions options;
    options.threads = 1;
    const kernels::AttendArgs args = Request(method, c);
    const auto start = std::chrono::steady_clock::now();
    auto got = AttendOnce(args, options);
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(got.ok()) << Name(method) << ": " << got.status();
    const kernels::AttendTimings& t = got->timings;
    EXPECT_GT(t.check_seconds, 0) << Name(method);
    EXPECT_GT(t.prepare_seconds, 0) << Name(method);
    EXPECT_GT(t.engine_seconds, 0) << Name(method);
    EXPECT_LE(t.check_seconds + t.prepare_seconds + t.engine_seconds, wall) << Name(method);
  }
}

TEST(AttentionTest, LogitsBeyondFloatExpRangeStayFinite) {
  // Scores 1800, 1770 and 0: exp(1800) overflows float32 (and double), the
  // max-subtracted softmax does not.
  kernels::AttendArgs args;
  args.method = MethodKind::kNone;
  args.inputs["q"] = Tensor({1, 1, 1, 2}, {30, 30});
  args.inputs["k"] = Tensor({1, 1, 3, 2}, {30, 30, 29, 30, -30, 30});
  args.inputs["v"] = Tensor({1, 1, 3, 1}, {1, 2, 3});
  args.scale = 1.0;
  args.return_probs = true;
  auto got = AttendOnce(args);
  ASSERT_TRUE(got.ok()) << got.status();
  const double p1 = 1 / (1 + std::exp(-30.0));
  const double p2 = std::exp(-30.0) / (1 + std::exp(-30.0));
  EXPECT_NEAR(got->probs->values()[0], p1, 1e-7);
  EXPECT_NEAR(got->probs->values()[1], p2, 1e-18);
  EXPECT_EQ(got->probs->values()[2], 0.0f);
  EXPECT_NEAR(got->out.values()[0], p1 * 1 + p2 * 2, 1e-6);
  // Negative logits of the same size: every score about -1800.
  args.scale = -1.0;
  got = AttendOnce(args);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->probs->values()[2], 1.0f);
  EXPECT_EQ(got->out.values()[0], 3.0f);
  // And for the methods with their own score terms.
  for (MethodKind method : kernels::kAllMethods) {
    RandomCase c;
    c.scale = 300.0;  // |score| up to several hundred.
    const kernels::AttendArgs big = Request(method, c);
    auto result = AttendOnce(big);
    ASSERT_TRUE(result.ok()) << Name(method) << ": " << result.status();
    auto ref = ReferenceAttend(big);
    ASSERT_TRUE(ref.ok());
    EXPECT_EQ(CompareToReference("out", result->out, ref->at("out"), 1e-4, 1e-5), "")
        << Name(method);
  }
}

TEST(AttentionTest, ScoresBeyondFloatAreAnErrorOnBothEngines) {
  // q . k = 2e60 is infinite in float32: the softmax of a row of infinities
  // is NaN. The fast engine checks its output rows as it writes them (in the
  // first, middle and last query block here), the plain one after the call.
  for (int64_t bad_row : {0, 150, 299}) {
    kernels::AttendArgs args;
    args.method = MethodKind::kNone;
    std::vector<float> q(300 * 2, 0.5f);
    q[bad_row * 2] = q[bad_row * 2 + 1] = 1e30f;
    args.inputs["q"] = Tensor({1, 1, 300, 2}, q);
    args.inputs["k"] = Tensor({1, 1, 2, 2}, {1e30f, 1e30f, 1e30f, 1e30f});
    args.inputs["v"] = Tensor({1, 1, 2, 1}, {1, 2});
    args.scale = 1.0;
    args.query_offset = 0;  // Sq > Sk
    for (kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
      kernels::ComputeOptions options;
      options.engine = engine;
      options.threads = 2;
      auto got = AttendOnce(args, options);
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << bad_row;
      EXPECT_THAT(std::string(got.status().message()),
                  HasSubstr("q, k, scale: the scores overflow float32"))
          << bad_row;
    }
  }
}

}  // namespace
}  // namespace attnserve::testing
