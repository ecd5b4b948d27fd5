// The kernels against the independent double-precision reference
// (tests/testing/reference.h), and the reference against the golden vectors.
//
// ReferenceDiffTest: the cases of AllDiffCases() (random_args.h; shared with
// fast_engine_test.cc): every method x seeded random geometries (odd D,
// Sq != Sk, explicit offsets beyond Sk - Sq, Sq > Sk, S = 1, S ~ 100, Dv != D,
// B and H > 1, causal and not, explicit and negative scales) plus each
// method's own variants (RoPE layout x scaling x partial rotary_dim, Shaw K = 0
// and K > S, Transformer-XL memory and bidirectional, DA large and negative
// w / v, ALiBi heads that are not powers of two). Each case's seed is
// 1000 * (method + 1) + case index and is printed with the case; out and probs
// must match within rtol 1e-4 / atol 1e-5 with 1 and with 2 threads, and out
// also without probs (the fast engine's streaming path); the plain engine
// (Engine::kPlain) to the same tolerance.
// ReferenceEncodeDiffTest: every encode form on seeded random requests
// (positions in the thousands, every RoPE layout and scaling), rtol 1e-5 /
// atol 1e-6. GoldenReferenceTest: the reference reproduces every golden
// vector of tests/golden/ (their tolerance, and 1e-9 relative).
#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/golden.h"
#include "tests/testing/golden_kernels.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;

constexpr double kRtol = 1e-4;
constexpr double kAtol = 1e-5;

class ReferenceDiffTest : public ::testing::TestWithParam<DiffCase> {};

TEST_P(ReferenceDiffTest, KernelMatchesReferenceWithOneAndTwoThreads) {
  const DiffCase& d = GetParam();
  const std::string what = ::testing::PrintToString(d);
  std::cout << "case: " << what << "\n";
  RecordProperty("seed", static_cast<int>(d.seed));
  std::mt19937 rng(d.seed ^ 0x5eedu);
  const kernels::AttendArgs args = RandomAttendArgs(d.c, rng);

  auto ref = ReferenceAttend(args);
  ASSERT_TRUE(ref.ok()) << what << ": " << ref.status();

  kernels::Tensor out_one_thread;
  for (int threads : {1, 2}) {
    kernels::ComputeOptions options;
    options.threads = threads;
    auto got = kernels::Attend(args, options);
    ASSERT_TRUE(got.ok()) << what << " threads=" << threads << ": " << got.status();
    ASSERT_TRUE(got->probs.has_value());
    EXPECT_EQ(CompareToReference("out", got->out, ref->at("out"), kRtol, kAtol), "")
        << what << " threads=" << threads;
    EXPECT_EQ(CompareToReference("probs", *got->probs, ref->at("probs"), kRtol, kAtol), "")
        << what << " threads=" << threads;
    // Without probs the engine takes its streaming (online softmax) path.
    kernels::AttendArgs out_only_args = args;
    out_only_args.return_probs = false;
    auto out_only = kernels::Attend(std::move(out_only_args), options);
    ASSERT_TRUE(out_only.ok()) << what << " threads=" << threads << ": " << out_only.status();
    EXPECT_FALSE(out_only->probs.has_value());
    EXPECT_EQ(CompareToReference("out", out_only->out, ref->at("out"), kRtol, kAtol), "")
        << what << " threads=" << threads << " without probs";
    if (threads == 1) {
      out_one_thread = got->out;
      RecordProperty("max_abs_error_out", std::to_string(MaxAbsError(got->out, ref->at("out"))));
    } else {
      // The FlashAttention rule, here for the threaded split of the same engine.
      EXPECT_TRUE(CheckErrorRule(got->out, out_one_thread, ref->at("out"), 2.0, 1e-7).ok())
          << what << ": " << CheckErrorRule(got->out, out_one_thread, ref->at("out"), 2.0, 1e-7);
    }
  }
}

// The plain engine is the baseline every faster one is measured against: it
// must meet the same tolerance (here too for the absolute methods, whose
// projections hand it heads interleaved).
TEST_P(ReferenceDiffTest, PlainEngineMatchesReference) {
  const DiffCase& d = GetParam();
  const std::string what = ::testing::PrintToString(d);
  std::mt19937 rng(d.seed ^ 0x5eedu);
  const kernels::AttendArgs args = RandomAttendArgs(d.c, rng);
  auto ref = ReferenceAttend(args);
  ASSERT_TRUE(ref.ok()) << what << ": " << ref.status();
  kernels::ComputeOptions options;
  options.threads = 2;
  options.engine = kernels::Engine::kPlain;
  auto got = kernels::Attend(args, options);
  ASSERT_TRUE(got.ok()) << what << ": " << got.status();
  ASSERT_TRUE(got->probs.has_value());
  EXPECT_EQ(CompareToReference("out", got->out, ref->at("out"), kRtol, kAtol), "") << what;
  EXPECT_EQ(CompareToReference("probs", *got->probs, ref->at("probs"), kRtol, kAtol), "")
      << what;
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ReferenceDiffTest, ::testing::ValuesIn(AllDiffCases()),
                         [](const ::testing::TestParamInfo<DiffCase>& param) {
                           return absl::StrCat(kernels::MethodName(param.param.c.method), "_",
                                               param.param.label, "_seed", param.param.seed);
                         });

// ---------------------------------------------------------------------------
// Encode forms: the kernels' tables against the reference's on seeded random
// requests, at the spec's encode tolerance (rtol 1e-5, atol 1e-6).

struct EncodeCase {
  MethodKind method = MethodKind::kSinusoidal;
  int index = 0;
  uint32_t seed = 0;
};

void PrintTo(const EncodeCase& e, std::ostream* os) {
  *os << kernels::MethodName(e.method) << " encode #" << e.index << " seed=" << e.seed;
}

// A random encode request of e.method; every draw comes from e.seed.
kernels::EncodeArgs RandomEncodeArgs(const EncodeCase& e) {
  std::mt19937 rng(e.seed);
  kernels::EncodeArgs args;
  args.method = e.method;
  const bool large_positions = e.index % 2 == 1;
  switch (e.method) {
    case MethodKind::kNone:
      break;
    case MethodKind::kSinusoidal:
      if (e.index % 3 == 2) args.params.base = UniformReal(rng, 100, 1e5);
      args.offset = large_positions ? Uniform(rng, 1000, 5000) : Uniform(rng, 0, 20);
      args.inputs["x"] =
          RandomTensor({Uniform(rng, 1, 3), Uniform(rng, 1, 12), Uniform(rng, 1, 33)}, rng);
      break;
    case MethodKind::kLearned: {
      const int64_t seq = Uniform(rng, 1, 12), d_model = Uniform(rng, 1, 20);
      args.offset = Uniform(rng, 0, 10);
      args.inputs["x"] = RandomTensor({Uniform(rng, 1, 3), seq, d_model}, rng);
      args.inputs["table"] = RandomTensor({args.offset + seq + Uniform(rng, 0, 3), d_model}, rng);
      break;
    }
    case MethodKind::kRope: {
      const int64_t d = 2 * Uniform(rng, 2, 12);
      args.params.rope_layout =
          e.index % 2 == 0 ? kernels::RopeLayout::kInterleaved : kernels::RopeLayout::kHalf;
      args.params.rope_scaling = static_cast<kernels::RopeScaling>(e.index % 3);
      if (args.params.rope_scaling != kernels::RopeScaling::kNone) {
        args.params.scaling_factor = UniformReal(rng, 1.2, 16);
      }
      if (e.index % 4 >= 2) args.params.rotary_dim = 2 * Uniform(rng, 2, d / 2);
      if (e.index == 5) args.params.base = 5e5;
      args.offset = e.index >= 3 ? Uniform(rng, 1000, 5000) : Uniform(rng, 0, 20);
      args.inputs["x"] = RandomTensor(
          {Uniform(rng, 1, 2), Uniform(rng, 1, 3), Uniform(rng, 1, 10), d}, rng);
      break;
    }
    case MethodKind::kTransformerXL: {
      args.params.d_rel = 2 * Uniform(rng, 1, 16);
      if (e.index % 3 == 2) args.params.base = UniformReal(rng, 100, 1e5);
      const int64_t count = Uniform(rng, 1, 20);
      const double reach = large_positions ? 3000 : 20;
      args.inputs["distances"] = RandomTensor({count}, rng, -reach, reach);
      if (e.index % 4 != 0) {
        const double w = 1 / std::sqrt(static_cast<double>(args.params.d_rel));
        args.inputs["w_r"] =
            RandomTensor({Uniform(rng, 1, 3), args.params.d_rel, Uniform(rng, 1, 9)}, rng, -w, w);
      }
      break;
    }
    case MethodKind::kShaw: {
      const int64_t k = Uniform(rng, 0, 8);
      args.params.max_relative_position = k;
      args.sq = Uniform(rng, 1, 10);
      args.sk = Uniform(rng, 1, 10);
      if (args.sq > args.sk || e.index % 2 == 1) args.query_offset = Uniform(rng, 0, 15);
      args.inputs["rel_k"] = RandomTensor({2 * k + 1, Uniform(rng, 1, 9)}, rng);
      break;
    }
    case MethodKind::kAlibi:
      args.num_heads = Uniform(rng, 1, 24);
      args.sq = Uniform(rng, 1, 10);
      args.sk = Uniform(rng, 1, 40);
      args.query_offset = large_positions ? Uniform(rng, 0, 500) : std::optional<int64_t>();
      if (!args.query_offset && args.sq > args.sk) args.query_offset = 0;
      break;
    case MethodKind::kDaTransformer: {
      const int64_t heads = Uniform(rng, 1, 6);
      const double w_reach = large_positions ? 12 : 1;
      args.inputs["dist_w"] = RandomTensor({heads}, rng, -w_reach, w_reach);
      args.inputs["dist_v"] = RandomTensor({heads}, rng, -6, 6);
      args.sq = Uniform(rng, 1, 8);
      args.sk = Uniform(rng, 1, large_positions ? 120 : 10);
      if (args.sq > args.sk || large_positions) args.query_offset = Uniform(rng, 0, 100);
      break;
    }
  }
  return args;
}

std::vector<EncodeCase> AllEncodeCases() {
  std::vector<EncodeCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    if (method == MethodKind::kNone) continue;
    for (int index = 0; index < 6; ++index) {
      EncodeCase e;
      e.method = method;
      e.index = index;
      e.seed = static_cast<uint32_t>(50000 + 100 * static_cast<int>(method) + index);
      cases.push_back(e);
    }
  }
  return cases;
}

class ReferenceEncodeDiffTest : public ::testing::TestWithParam<EncodeCase> {};

TEST_P(ReferenceEncodeDiffTest, KernelTablesMatchReference) {
  const EncodeCase& e = GetParam();
  const std::string what = ::testing::PrintToString(e);
  std::cout << "case: " << what << "\n";
  const kernels::EncodeArgs args = RandomEncodeArgs(e);
  auto ref = ReferenceEncode(args);
  ASSERT_TRUE(ref.ok()) << what << ": " << ref.status();
  auto got = kernels::Encode(args, {});
  ASSERT_TRUE(got.ok()) << what << ": " << got.status();
  ASSERT_EQ(got->outputs.size(), ref->size()) << what;
  for (const auto& [name, expected] : *ref) {
    auto it = got->outputs.find(name);
    ASSERT_NE(it, got->outputs.end()) << what << ": no " << name;
    EXPECT_EQ(CompareToReference(name, it->second, expected, 1e-5, 1e-6), "") << what;
  }
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ReferenceEncodeDiffTest,
                         ::testing::ValuesIn(AllEncodeCases()),
                         [](const ::testing::TestParamInfo<EncodeCase>& param) {
                           return absl::StrCat(kernels::MethodName(param.param.method), "_",
                                               param.param.index, "_seed", param.param.seed);
                         });

// ---------------------------------------------------------------------------
// The reference itself against the spec's golden numbers. It computes in
// double, so besides the case's own tolerance it must agree to 1e-9 relative.

std::string CompareRef(const std::string& name, const GoldenTensor& expected,
                       const RefTensor& got, double rtol, double atol) {
  if (got.shape != expected.shape) return name + ": shape differs from the golden one";
  int64_t bad = 0;
  std::string first;
  for (size_t n = 0; n < got.data.size(); ++n) {
    const double error = std::abs(got.data[n] - expected.data[n]);
    if (!std::isfinite(got.data[n]) || !(error <= atol + rtol * std::abs(expected.data[n]))) {
      if (bad++ == 0) {
        first = absl::StrCat(" first at [", n, "]: ", got.data[n], " vs ", expected.data[n]);
      }
    }
  }
  if (bad == 0) return "";
  return absl::StrCat(name, ": ", bad, " values off (rtol ", rtol, ", atol ", atol, ")", first);
}

class GoldenReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenReferenceTest, ReferenceReproducesGoldenVector) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<RefOutputs> got = absl::UnknownError("unknown op");
  if (c->op == "attend") {
    auto args = ToAttendArgs(*c);
    ASSERT_TRUE(args.ok()) << args.status();
    got = ReferenceAttend(*args);
  } else {
    auto args = ToEncodeArgs(*c);
    ASSERT_TRUE(args.ok()) << args.status();
    got = ReferenceEncode(*args);
  }
  if (!c->expect_error.empty()) {
    EXPECT_EQ(got.status().code(), ExpectedCode(*c)) << c->name << ": " << got.status();
    return;
  }
  ASSERT_TRUE(got.ok()) << c->name << ": " << got.status();
  for (const auto& [name, expected] : c->expected) {
    auto it = got->find(name);
    ASSERT_NE(it, got->end()) << c->name << ": no output " << name;
    EXPECT_EQ(CompareRef(name, expected, it->second, c->rtol, c->atol), "") << c->name;
    EXPECT_EQ(CompareRef(name, expected, it->second, 1e-9, 1e-12), "") << c->name;
  }
  if (c->op == "encode") {
    for (const auto& [name, tensor] : *got) {
      EXPECT_EQ(c->expected.count(name), 1u) << c->name << ": unexpected output " << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenReferenceTest,
                         ::testing::ValuesIn(GoldenCaseFiles(GoldenDir())),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return GoldenTestName(param.param);
                         });

}  // namespace
}  // namespace attnserve::testing
