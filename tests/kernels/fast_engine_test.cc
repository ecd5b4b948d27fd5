// The fast engine (ComputeOptions::engine = kFast) against the double
// reference under FlashAttention's rule, and its memory at S = 16384.
//
// FastEngineDiffTest: on every case of AllDiffCases() (random_args.h: every
// method, odd D, Sq != Sk, offsets, tiny S, K > S, every RoPE layout x
// scaling x partial rotary_dim) and on long cases with D = 64 and S in the
// hundreds to a thousand (sizes that leave partial tiles, decode steps,
// explicit offsets, Shaw K > S) and on Transformer-XL with query offsets up
// to 2^30, the fast engine's max |out - reference| is
// at most 2x the naive float32 path's (naive_float32.h) plus kSlack, with 1
// and 2 threads, with and without probs requested (the fused path may only
// run without them; with them probs obey the same rule).
// FastEngineGoldenTest: every golden vector through kFast explicitly, with
// and without probs requested.
// HeapPeakTest: the heap measurement of heap_peak.h sees a short-lived block
// allocated on another thread.
// FastEngineMemoryTest: every method at B1 H1 S16384 D64 stays under 64 MiB
// of heap beyond its inputs and output, measured by heap_peak.h.
#include <atomic>
#include <cstdint>
#include <iterator>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/golden.h"
#include "tests/testing/golden_kernels.h"
#include "tests/testing/heap_peak.h"
#include "tests/testing/naive_float32.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;

// The rule's absolute floor, under one float32 ulp at |out| ~ 1: for cases
// where the naive path happens to be exact (S = 1, one unmasked key).
constexpr double kSlack = 1e-7;
constexpr int64_t kMiB = int64_t{1} << 20;

kernels::ComputeOptions FastOptions(int threads) {
  kernels::ComputeOptions options;
  options.engine = kernels::Engine::kFast;
  options.threads = threads;
  return options;
}

// Long geometries with the bench's head size: sizes around and between tile
// multiples, decode steps against a long cache, explicit offsets.
std::vector<DiffCase> LongCases() {
  struct Recipe {
    const char* label;
    void (*draw)(RandomCase&, std::mt19937&);
  };
  static const Recipe kRecipes[] = {
      {"long_noncausal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = c.sk = Uniform(rng, 200, 700);
         c.causal = false;
       }},
      {"long_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = c.sk = Uniform(rng, 300, 800);
         c.causal = true;
       }},
      {"decode_long_cache",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 1, 3);
         c.sk = Uniform(rng, 600, 1100);
         c.causal = true;
       }},
      {"cross_offset_beyond_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 90, 200);
         c.sk = Uniform(rng, 250, 500);
         c.query_offset = c.sk - c.sq + Uniform(rng, 1, 60);
         c.causal = true;
       }},
  };
  std::vector<DiffCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    for (int n = 0; n < static_cast<int>(std::size(kRecipes)); ++n) {
      const Recipe& recipe = kRecipes[n];
      DiffCase d;
      d.c.method = method;
      d.label = recipe.label;
      d.seed = static_cast<uint32_t>(90000 + 100 * static_cast<int>(method) + n);
      std::mt19937 rng(d.seed);
      d.c.heads = 2;
      d.c.d = d.c.dv = 64;
      d.c.d_model = 64;  // sinusoidal, learned: two heads of 32
      if (method == MethodKind::kSinusoidal || method == MethodKind::kLearned) d.c.d = d.c.dv = 32;
      recipe.draw(d.c, rng);
      switch (method) {
        case MethodKind::kRope:  // A different layout x scaling per recipe.
          d.c.params.rope_layout =
              n % 2 == 0 ? kernels::RopeLayout::kInterleaved : kernels::RopeLayout::kHalf;
          d.c.params.rope_scaling = static_cast<kernels::RopeScaling>(n % 3);
          if (d.c.params.rope_scaling != kernels::RopeScaling::kNone) {
            d.c.params.scaling_factor = UniformReal(rng, 1.5, 8.0);
          }
          if (n == 3) d.c.params.rotary_dim = 32;  // partial, half layout
          break;
        case MethodKind::kTransformerXL: d.c.d_rel = 64; break;
        case MethodKind::kShaw:  // K > S on the last recipe.
          d.c.max_relative_position = n == 3 ? d.c.sk + Uniform(rng, 1, 50) : 64;
          break;
        case MethodKind::kDaTransformer: d.c.w_scale = 0.05; break;  // |x| up to ~50
        case MethodKind::kNone:
        case MethodKind::kSinusoidal:
        case MethodKind::kLearned:
        case MethodKind::kAlibi: break;
      }
      cases.push_back(d);
    }
  }
  return cases;
}

class FastEngineDiffTest : public ::testing::TestWithParam<DiffCase> {};

TEST_P(FastEngineDiffTest, ErrorAtMostTwiceNaiveFloat32) {
  const DiffCase& d = GetParam();
  const std::string what = ::testing::PrintToString(d);
  std::cout << "case: " << what << "\n";
  RecordProperty("seed", static_cast<int>(d.seed));
  std::mt19937 rng(d.seed ^ 0xfa57u);
  const kernels::AttendArgs args = RandomAttendArgs(d.c, rng);

  auto ref = ReferenceAttend(args);
  ASSERT_TRUE(ref.ok()) << what << ": " << ref.status();
  auto naive = NaiveFloat32Attend(args);
  ASSERT_TRUE(naive.ok()) << what << ": " << naive.status();
  const double naive_error = MaxAbsError(naive->out, ref->at("out"));
  RecordProperty("naive_error_out", std::to_string(naive_error));

  for (bool return_probs : {false, true}) {
    for (int threads : {1, 2}) {
      const std::string run =
          absl::StrCat(what, " threads=", threads, return_probs ? " with probs" : "");
      kernels::AttendArgs fast_args = args;
      fast_args.return_probs = return_probs;
      auto fast = kernels::Attend(std::move(fast_args), FastOptions(threads));
      ASSERT_TRUE(fast.ok()) << run << ": " << fast.status();
      const absl::Status out_rule =
          CheckErrorRule(fast->out, naive->out, ref->at("out"), 2.0, kSlack);
      EXPECT_TRUE(out_rule.ok()) << run << ": out: " << out_rule;
      if (threads == 1 && !return_probs) {
        std::cout << "  max |out - ref|: fast " << MaxAbsError(fast->out, ref->at("out"))
                  << ", naive float32 " << naive_error << "\n";
      }
      ASSERT_EQ(fast->probs.has_value(), return_probs) << run;
      if (return_probs) {
        const absl::Status probs_rule =
            CheckErrorRule(*fast->probs, naive->probs, ref->at("probs"), 2.0, kSlack);
        EXPECT_TRUE(probs_rule.ok()) << run << ": probs: " << probs_rule;
      }
    }
  }
}

std::string DiffCaseName(const ::testing::TestParamInfo<DiffCase>& param) {
  return absl::StrCat(kernels::MethodName(param.param.c.method), "_", param.param.label, "_seed",
                      param.param.seed);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, FastEngineDiffTest, ::testing::ValuesIn(AllDiffCases()),
                         DiffCaseName);
INSTANTIATE_TEST_SUITE_P(Long, FastEngineDiffTest, ::testing::ValuesIn(LongCases()),
                         DiffCaseName);

// attention-variants.md 1-5 under the same rule, every method: GQA and MQA,
// key lengths, causal and symmetric windows, softcap, rows that see no key,
// and all of them at once over several of the engine's blocks and tiles.
std::vector<DiffCase> VariantCases() {
  struct Recipe {
    const char* label;
    void (*draw)(RandomCase&, std::mt19937&);
  };
  static const Recipe kRecipes[] = {
      {"gqa_h4_kv2_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.heads = 4;
         c.kv_heads = 2;
         c.sq = c.sk = Uniform(rng, 100, 200);
         c.causal = true;
       }},
      {"mqa_h3",
       [](RandomCase& c, std::mt19937& rng) {
         c.heads = 3;
         c.kv_heads = 1;
         c.sq = Uniform(rng, 20, 60);
         c.sk = Uniform(rng, 100, 300);
       }},
      {"kv_lengths_b3",
       [](RandomCase& c, std::mt19937& rng) {
         c.batch = 3;
         c.sq = Uniform(rng, 50, 120);
         c.sk = Uniform(rng, 200, 400);
         c.kv_lengths = {c.sk, Uniform(rng, 1, c.sk), Uniform(rng, 1, 40)};
         c.causal = Uniform(rng, 0, 1) == 1;
         c.query_offset = c.sk - c.sq;
       }},
      {"window_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = c.sk = Uniform(rng, 300, 600);
         c.window = Uniform(rng, 1, 200);
         c.causal = true;
       }},
      {"window_symmetric",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = c.sk = Uniform(rng, 300, 600);
         c.window = Uniform(rng, 1, 150);
       }},
      {"softcap",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = c.sk = Uniform(rng, 100, 300);
         c.scale = UniformReal(rng, 0.5, 1.5);
         c.softcap = UniformReal(rng, 0.5, 5.0);
         c.causal = true;
       }},
      {"empty_rows",
       [](RandomCase& c, std::mt19937& rng) {
         c.batch = 2;
         c.sq = Uniform(rng, 100, 200);
         c.sk = Uniform(rng, 300, 400);
         c.query_offset = c.sk - 50;  // the rows past L_1 + W - 1 of element 1 see nothing
         c.kv_lengths = {c.sk, Uniform(rng, 20, 100)};
         c.window = Uniform(rng, 10, 60);
         c.causal = true;
       }},
      {"combined",
       [](RandomCase& c, std::mt19937& rng) {
         c.batch = 2;
         c.heads = 4;
         c.kv_heads = 2;
         c.sq = Uniform(rng, 150, 300);
         c.sk = Uniform(rng, 400, 700);
         c.kv_lengths = {Uniform(rng, 300, c.sk), Uniform(rng, 100, c.sk)};
         c.window = Uniform(rng, 30, 300);
         c.softcap = UniformReal(rng, 1.0, 10.0);
         c.causal = Uniform(rng, 0, 1) == 1;
         c.query_offset = c.sk - c.sq + Uniform(rng, 0, 20);
       }},
  };
  std::vector<DiffCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    for (int n = 0; n < static_cast<int>(std::size(kRecipes)); ++n) {
      const Recipe& recipe = kRecipes[n];
      DiffCase d;
      d.c.method = method;
      d.label = recipe.label;
      d.seed = static_cast<uint32_t>(97000 + 100 * static_cast<int>(method) + n);
      std::mt19937 rng(d.seed);
      d.c.d = d.c.dv = 32;
      d.c.d_model = 48;
      if (method == MethodKind::kSinusoidal || method == MethodKind::kLearned) d.c.d = d.c.dv = 12;
      recipe.draw(d.c, rng);
      switch (method) {
        case MethodKind::kTransformerXL: d.c.d_rel = 16; break;
        case MethodKind::kShaw: d.c.max_relative_position = 40; break;
        case MethodKind::kDaTransformer: d.c.w_scale = 0.05; break;
        case MethodKind::kRope:
          d.c.params.rope_layout =
              n % 2 == 0 ? kernels::RopeLayout::kInterleaved : kernels::RopeLayout::kHalf;
          break;
        case MethodKind::kNone:
        case MethodKind::kSinusoidal:
        case MethodKind::kLearned:
        case MethodKind::kAlibi: break;
      }
      cases.push_back(d);
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Variants, FastEngineDiffTest, ::testing::ValuesIn(VariantCases()),
                         DiffCaseName);

// Transformer-XL forms its angles around the reference position
// query_offset (key features R(query_offset - j), query features turned by
// i f_n): far from position 0 the result must stay as close to the double
// reference as the direct R(q_pos - j) of the naive float32 path is.
std::vector<DiffCase> FarOffsetCases() {
  std::vector<DiffCase> cases;
  const int64_t offsets[] = {100000, 1000003, int64_t{1} << 30};
  for (int n = 0; n < static_cast<int>(std::size(offsets)); ++n) {
    DiffCase d;
    d.c.method = MethodKind::kTransformerXL;
    d.label = absl::StrCat("far_offset_", offsets[n]);
    d.seed = static_cast<uint32_t>(95000 + n);
    d.c.heads = 2;
    d.c.d = d.c.dv = d.c.d_rel = 64;
    d.c.sq = 130;
    d.c.sk = 300;
    d.c.query_offset = offsets[n];
    d.c.causal = n % 2 == 0;
    cases.push_back(d);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(TransformerXl, FastEngineDiffTest, ::testing::ValuesIn(FarOffsetCases()),
                         DiffCaseName);

// Shaw under causal masking multiplies q . rel_k and the value term only
// over the buckets each 6-row group meets with the keys it sees (none past
// K): K from 0 (every visible key in bucket K) to past S, groups that start
// and end inside a tile, decode steps, queries past the keys.
std::vector<DiffCase> ShawCausalCases() {
  struct Geometry {
    const char* label;
    int64_t sq, sk, k;
    std::optional<int64_t> query_offset;
  };
  const Geometry geometries[] = {
      {"k0", 131, 131, 0, std::nullopt},
      {"k1", 200, 200, 1, std::nullopt},
      {"k5_two_blocks", 193, 193, 5, std::nullopt},
      {"k64_s128", 128, 128, 64, std::nullopt},
      {"k100_sk_past_tile", 100, 300, 100, std::nullopt},
      {"k7_decode", 2, 700, 7, std::nullopt},
      {"k40_offset_beyond", 97, 260, 40, 200},
      {"k300_larger_than_s", 150, 150, 300, std::nullopt},
  };
  std::vector<DiffCase> cases;
  for (int n = 0; n < static_cast<int>(std::size(geometries)); ++n) {
    const Geometry& g = geometries[n];
    DiffCase d;
    d.c.method = MethodKind::kShaw;
    d.label = absl::StrCat("causal_", g.label);
    d.seed = static_cast<uint32_t>(96000 + n);
    d.c.heads = 2;
    d.c.d = d.c.dv = 64;
    d.c.sq = g.sq;
    d.c.sk = g.sk;
    d.c.max_relative_position = g.k;
    d.c.query_offset = g.query_offset;
    d.c.causal = true;
    cases.push_back(d);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(ShawCausal, FastEngineDiffTest, ::testing::ValuesIn(ShawCausalCases()),
                         DiffCaseName);

// ---------------------------------------------------------------------------
// Golden vectors through kFast explicitly (golden_test.cc runs the default
// engine), and once more with only `out` requested.

class FastEngineGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FastEngineGoldenTest, MatchesWithAndWithoutProbs) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  for (int threads : {1, 2}) {
    EXPECT_EQ(RunGoldenThroughKernels(*c, FastOptions(threads)), "")
        << c->name << " threads=" << threads;
  }
  if (c->op != "attend" || !c->expect_error.empty()) return;
  auto args = ToAttendArgs(*c);
  ASSERT_TRUE(args.ok()) << args.status();
  args->return_probs = false;
  auto result = kernels::Attend(*std::move(args), FastOptions(2));
  ASSERT_TRUE(result.ok()) << c->name << ": " << result.status();
  EXPECT_FALSE(result->probs.has_value()) << c->name;
  const GoldenTensor& expected = c->expected.at("out");
  EXPECT_EQ(CompareTensor("out", expected, result->out.shape(), result->out.values(), c->rtol,
                          c->atol),
            "")
      << c->name << " without probs";
}

INSTANTIATE_TEST_SUITE_P(AllCases, FastEngineGoldenTest,
                         ::testing::ValuesIn(GoldenCaseFiles(GoldenDir())),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return GoldenTestName(param.param);
                         });

// ---------------------------------------------------------------------------
// Heap measurement.

TEST(HeapPeakTest, SeesAShortLivedBlockOnAnotherThread) {
  if (!HeapPeakScope::Available()) GTEST_SKIP() << "malloc is owned by a sanitizer here";
  HeapPeakScope scope;
  static std::atomic<char*> escape{nullptr};  // So the block cannot be optimised away.
  std::thread([] {
    std::vector<char> block(static_cast<size_t>(8 * kMiB), 1);
    escape.store(block.data());
  }).join();
  EXPECT_GE(scope.PeakGrowth(), 8 * kMiB);
  EXPECT_LT(scope.Growth(), kMiB);
}

// ---------------------------------------------------------------------------
// Memory at S = 16384: heap beyond inputs and output, measured.

class FastEngineMemoryTest : public ::testing::TestWithParam<MethodKind> {};

TEST_P(FastEngineMemoryTest, UnderSixtyFourMiBBeyondInputsAndOutputAtS16384) {
  if (!HeapPeakScope::Available()) GTEST_SKIP() << "malloc is owned by a sanitizer here";
  constexpr int64_t kS = 16384;
  RandomCase c;
  c.method = GetParam();
  c.heads = 1;
  c.sq = c.sk = kS;
  c.d = c.dv = c.d_model = 64;
  c.d_rel = 64;
  c.max_relative_position = 64;
  c.w_scale = 0.01;
  std::mt19937 rng(16384);
  kernels::AttendArgs args = RandomAttendArgs(c, rng);
  args.return_probs = false;

  // The inputs exist before the scope starts (its baseline); the output is
  // subtracted. Attend takes the inputs by move, so no copy is counted.
  HeapPeakScope scope;
  auto result = kernels::Attend(std::move(args), FastOptions(2));
  const int64_t peak = scope.PeakGrowth();
  ASSERT_TRUE(result.ok()) << result.status();
  const int64_t out_bytes = result->out.size() * static_cast<int64_t>(sizeof(float));
  const int64_t extra = peak - out_bytes;
  std::cout << kernels::MethodName(c.method) << ": peak heap growth " << peak << " B, output "
            << out_bytes << " B, extra " << static_cast<double>(extra) / kMiB << " MiB\n";
  RecordProperty("extra_bytes", std::to_string(extra));
  EXPECT_LT(extra, 64 * kMiB) << kernels::MethodName(c.method);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, FastEngineMemoryTest, ::testing::ValuesIn(kernels::kAllMethods),
                         [](const ::testing::TestParamInfo<MethodKind>& param) {
                           return std::string(kernels::MethodName(param.param));
                         });

}  // namespace
}  // namespace attnserve::testing
