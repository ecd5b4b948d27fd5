// The kernels against the independent double-precision reference
// (tests/testing/reference.h), and the reference against the golden vectors.
//
// ReferenceDiffTest: every method x a list of seeded random geometries (odd D,
// Sq != Sk, explicit offsets beyond Sk - Sq, Sq > Sk, S = 1, S ~ 100, Dv != D,
// B and H > 1, causal and not, explicit and negative scales) plus each
// method's own variants (RoPE layout x scaling x partial rotary_dim, Shaw K = 0
// and K > S, Transformer-XL memory and bidirectional, DA large and negative
// w / v, ALiBi heads that are not powers of two). Each case's seed is
// 1000 * (method + 1) + case index and is printed with the case; out and probs
// must match within rtol 1e-4 / atol 1e-5 with 1 and with 2 threads.
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

struct DiffCase {
  RandomCase c;
  std::string label;
  uint32_t seed = 0;
};

void PrintTo(const DiffCase& d, std::ostream* os) {
  *os << kernels::MethodName(d.c.method) << "/" << d.label << " seed=" << d.seed << " ("
      << d.c.Describe() << ")";
}

int64_t Uniform(std::mt19937& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

double UniformReal(std::mt19937& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

// RoPE needs pairs: an odd D without rotary_dim gets rotary_dim = D - 1 (the
// partial-rotary way to use an odd head size); NTK needs rotary_dim > 2.
void FixUpRope(RandomCase& c) {
  if (c.method != MethodKind::kRope) return;
  if (c.d < 2) c.d = 2;
  const bool ntk = c.params.rope_scaling == kernels::RopeScaling::kNtk;
  if (ntk && c.d < 4) c.d = 4;
  if (!c.params.rotary_dim && c.d % 2 != 0) c.params.rotary_dim = c.d - 1;
  if (ntk && c.params.rotary_dim && *c.params.rotary_dim < 4) c.params.rotary_dim = 4;
}

// The geometries every method runs.
void AddCommonCases(MethodKind method, std::vector<DiffCase>& cases) {
  using Recipe = void (*)(RandomCase&, std::mt19937&);
  struct Named {
    const char* label;
    Recipe recipe;
  };
  static const Named kRecipes[] = {
      {"basic",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = c.sk = Uniform(rng, 2, 8);
         c.d = c.dv = Uniform(rng, 2, 12);
         c.d_model = Uniform(rng, 2, 12);
       }},
      {"single_position",
       [](RandomCase& c, std::mt19937&) {
         c.sq = c.sk = 1;
         c.d = c.dv = c.d_model = 2;
         c.causal = true;
       }},
      {"odd_d_dv_differs_b2_h3",
       [](RandomCase& c, std::mt19937& rng) {
         c.batch = 2;
         c.heads = 3;
         c.sq = c.sk = Uniform(rng, 3, 9);
         c.d = 2 * Uniform(rng, 1, 4) + 1;
         c.dv = c.d + Uniform(rng, 1, 4);
         c.d_model = 2 * Uniform(rng, 2, 6) + 1;
         c.causal = true;
       }},
      {"cross_default_offset",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 1, 4);
         c.sk = c.sq + Uniform(rng, 2, 9);
         c.d = Uniform(rng, 2, 10);
         c.dv = Uniform(rng, 1, 10);
         c.heads = 2;
       }},
      {"cross_default_offset_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 1, 4);
         c.sk = c.sq + Uniform(rng, 2, 9);
         c.d = Uniform(rng, 2, 10);
         c.dv = Uniform(rng, 1, 10);
         c.causal = true;
       }},
      {"offset_beyond_sk_minus_sq_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 2, 5);
         c.sk = Uniform(rng, c.sq, 10);
         c.query_offset = c.sk - c.sq + Uniform(rng, 1, 20);
         c.d = c.dv = Uniform(rng, 2, 8);
         c.causal = true;
       }},
      {"offset_beyond_sk_minus_sq",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 2, 5);
         c.sk = Uniform(rng, c.sq, 10);
         c.query_offset = c.sk - c.sq + Uniform(rng, 1, 50);
         c.d = Uniform(rng, 2, 8);
         c.dv = Uniform(rng, 1, 8);
       }},
      {"sq_above_sk_explicit_offset_causal",
       [](RandomCase& c, std::mt19937& rng) {
         c.sk = Uniform(rng, 1, 4);
         c.sq = c.sk + Uniform(rng, 1, 6);
         c.query_offset = Uniform(rng, 0, 5);
         c.d = c.dv = Uniform(rng, 2, 8);
         c.causal = true;
       }},
      {"sq_above_sk_explicit_offset",
       [](RandomCase& c, std::mt19937& rng) {
         c.sk = Uniform(rng, 1, 4);
         c.sq = c.sk + Uniform(rng, 1, 6);
         c.query_offset = Uniform(rng, 0, 5);
         c.d = Uniform(rng, 2, 8);
         c.dv = Uniform(rng, 1, 8);
       }},
      {"long_causal_h2",
       [](RandomCase& c, std::mt19937& rng) {
         c.heads = 2;
         c.sq = c.sk = Uniform(rng, 90, 110);
         c.d = 16;
         c.dv = 12;
         c.d_model = 24;
         c.causal = true;
       }},
      {"long_cross_h2",
       [](RandomCase& c, std::mt19937& rng) {
         c.heads = 2;
         c.sq = Uniform(rng, 30, 50);
         c.sk = Uniform(rng, 100, 130);
         c.d = 10;
         c.dv = 6;
         c.d_model = 20;
       }},
      {"negative_scale",
       [](RandomCase& c, std::mt19937& rng) {
         c.heads = 2;
         c.sq = Uniform(rng, 2, 8);
         c.sk = Uniform(rng, c.sq, 10);
         c.d = c.dv = Uniform(rng, 2, 10);
         c.scale = -UniformReal(rng, 0.2, 1.5);
         c.causal = Uniform(rng, 0, 1) == 1;
       }},
      {"explicit_scale",
       [](RandomCase& c, std::mt19937& rng) {
         c.sq = Uniform(rng, 2, 8);
         c.sk = Uniform(rng, c.sq, 10);
         c.d = c.dv = Uniform(rng, 2, 10);
         c.scale = UniformReal(rng, 0.3, 2.0);
         c.causal = Uniform(rng, 0, 1) == 1;
       }},
      {"random",
       [](RandomCase& c, std::mt19937& rng) {
         c.batch = Uniform(rng, 1, 2);
         c.heads = Uniform(rng, 1, 4);
         c.sq = Uniform(rng, 1, 12);
         c.sk = Uniform(rng, 1, 12);
         if (c.sq > c.sk || Uniform(rng, 0, 1) == 1) c.query_offset = Uniform(rng, 0, 15);
         c.d = Uniform(rng, 1, 10);
         c.dv = Uniform(rng, 1, 10);
         c.d_model = Uniform(rng, 1, 10);
         c.causal = Uniform(rng, 0, 1) == 1;
       }},
  };
  for (const Named& named : kRecipes) {
    DiffCase d;
    d.c.method = method;
    d.label = named.label;
    d.seed = static_cast<uint32_t>(1000 * (static_cast<int>(method) + 1) + cases.size());
    std::mt19937 rng(d.seed);
    named.recipe(d.c, rng);
    FixUpRope(d.c);
    cases.push_back(d);
  }
}

// A method's own variants, each from a recipe lambda.
template <typename Recipe>
void AddCase(MethodKind method, const std::string& label, std::vector<DiffCase>& cases,
             Recipe recipe) {
  DiffCase d;
  d.c.method = method;
  d.label = label;
  d.seed = static_cast<uint32_t>(1000 * (static_cast<int>(method) + 1) + cases.size());
  std::mt19937 rng(d.seed);
  recipe(d.c, rng);
  FixUpRope(d.c);
  cases.push_back(d);
}

void AddMethodCases(MethodKind method, std::vector<DiffCase>& cases) {
  switch (method) {
    case MethodKind::kNone:
      break;
    case MethodKind::kSinusoidal:
      AddCase(method, "base500_offset2000", cases, [](RandomCase& c, std::mt19937& rng) {
        c.params.base = 500;
        c.sq = Uniform(rng, 2, 6);
        c.sk = Uniform(rng, 2, 8);
        c.query_offset = 2000;
        c.d_model = 2 * Uniform(rng, 3, 8);
        c.causal = true;
      });
      break;
    case MethodKind::kLearned:
      AddCase(method, "table_exact_fit", cases, [](RandomCase& c, std::mt19937& rng) {
        c.sq = Uniform(rng, 2, 5);
        c.sk = Uniform(rng, 3, 8);
        c.query_offset = Uniform(rng, 0, 6);
        c.extra_table_rows = 0;
        c.heads = 2;
      });
      break;
    case MethodKind::kRope: {
      const kernels::RopeLayout layouts[] = {kernels::RopeLayout::kInterleaved,
                                             kernels::RopeLayout::kHalf};
      const kernels::RopeScaling scalings[] = {kernels::RopeScaling::kNone,
                                               kernels::RopeScaling::kLinear,
                                               kernels::RopeScaling::kNtk};
      for (kernels::RopeLayout layout : layouts) {
        for (kernels::RopeScaling scaling : scalings) {
          for (bool partial : {false, true}) {
            const std::string label =
                absl::StrCat(layout == kernels::RopeLayout::kHalf ? "half" : "interleaved", "_",
                             scaling == kernels::RopeScaling::kNone     ? "none"
                             : scaling == kernels::RopeScaling::kLinear ? "linear"
                                                                        : "ntk",
                             partial ? "_partial" : "_full");
            AddCase(method, label, cases, [&](RandomCase& c, std::mt19937& rng) {
              c.params.rope_layout = layout;
              c.params.rope_scaling = scaling;
              if (scaling != kernels::RopeScaling::kNone) {
                c.params.scaling_factor = UniformReal(rng, 1.5, 8.0);
              }
              c.d = 2 * Uniform(rng, 3, 8);
              c.dv = Uniform(rng, 2, 10);
              if (partial) c.params.rotary_dim = 2 * Uniform(rng, 2, c.d / 2 - 1);
              c.heads = Uniform(rng, 1, 3);
              c.sq = Uniform(rng, 2, 8);
              c.sk = Uniform(rng, c.sq, 12);
              // Positions in the thousands for some: the angle must be formed in double.
              if (Uniform(rng, 0, 1) == 1) c.query_offset = Uniform(rng, 0, 3000);
              c.causal = Uniform(rng, 0, 1) == 1;
            });
          }
        }
      }
      AddCase(method, "base500_odd_d_rotary_dim_d_minus_1", cases,
              [](RandomCase& c, std::mt19937& rng) {
                c.params.base = 500;
                c.d = 2 * Uniform(rng, 2, 5) + 1;
                c.params.rotary_dim = c.d - 1;
                c.sq = c.sk = Uniform(rng, 3, 9);
              });
      break;
    }
    case MethodKind::kTransformerXL:
      AddCase(method, "memory_causal", cases, [](RandomCase& c, std::mt19937& rng) {
        c.heads = 2;
        c.sq = Uniform(rng, 2, 6);
        c.sk = c.sq + Uniform(rng, 3, 10);
        c.d_rel = 2 * Uniform(rng, 2, 8);
        c.causal = true;
      });
      AddCase(method, "bidirectional", cases, [](RandomCase& c, std::mt19937& rng) {
        c.sq = c.sk = Uniform(rng, 4, 10);
        c.d_rel = 2 * Uniform(rng, 1, 10);
        c.d = Uniform(rng, 3, 9);
      });
      AddCase(method, "d_rel2_base500", cases, [](RandomCase& c, std::mt19937& rng) {
        c.params.base = 500;
        c.d_rel = 2;
        c.sq = c.sk = Uniform(rng, 3, 8);
        c.causal = Uniform(rng, 0, 1) == 1;
      });
      break;
    case MethodKind::kShaw:
      AddCase(method, "k0", cases, [](RandomCase& c, std::mt19937& rng) {
        c.max_relative_position = 0;
        c.sq = c.sk = Uniform(rng, 2, 8);
        c.dv = Uniform(rng, 1, 10);
      });
      AddCase(method, "k1_causal", cases, [](RandomCase& c, std::mt19937& rng) {
        c.max_relative_position = 1;
        c.sq = c.sk = Uniform(rng, 4, 10);
        c.causal = true;
      });
      AddCase(method, "k_larger_than_s", cases, [](RandomCase& c, std::mt19937& rng) {
        c.sq = c.sk = Uniform(rng, 2, 6);
        c.max_relative_position = c.sk + Uniform(rng, 2, 10);
        c.heads = 2;
      });
      AddCase(method, "k2_cross_offset_beyond", cases, [](RandomCase& c, std::mt19937& rng) {
        c.max_relative_position = 2;
        c.sq = Uniform(rng, 2, 4);
        c.sk = Uniform(rng, 5, 9);
        c.query_offset = c.sk - c.sq + Uniform(rng, 1, 4);
      });
      AddCase(method, "long_k16", cases, [](RandomCase& c, std::mt19937& rng) {
        c.max_relative_position = 16;
        c.sq = c.sk = Uniform(rng, 90, 110);
        c.d = 12;
        c.dv = 8;
        c.causal = true;
      });
      break;
    case MethodKind::kAlibi:
      for (int64_t heads : {3, 5, 6, 12}) {
        AddCase(method, absl::StrCat("h", heads), cases, [&](RandomCase& c, std::mt19937& rng) {
          c.heads = heads;
          c.sq = Uniform(rng, 2, 8);
          c.sk = Uniform(rng, c.sq, 12);
          c.d = Uniform(rng, 2, 8);
          c.causal = heads % 2 == 1;
        });
      }
      AddCase(method, "h3_long_noncausal", cases, [](RandomCase& c, std::mt19937& rng) {
        c.heads = 3;
        c.sq = c.sk = Uniform(rng, 90, 110);
      });
      break;
    case MethodKind::kDaTransformer:
      AddCase(method, "negative_w", cases, [](RandomCase& c, std::mt19937& rng) {
        c.heads = 3;
        c.w_scale = 3;  // U(-3, 3): about half the heads shrink with distance.
        c.sq = c.sk = Uniform(rng, 4, 10);
      });
      AddCase(method, "large_w_long", cases, [](RandomCase& c, std::mt19937& rng) {
        c.heads = 2;
        c.w_scale = 8;  // |x| up to several hundred.
        c.sq = c.sk = Uniform(rng, 90, 110);
        c.causal = true;
      });
      AddCase(method, "large_v", cases, [](RandomCase& c, std::mt19937& rng) {
        c.heads = 2;
        c.v_shift = 4;
        c.v_scale = 1;
        c.sq = Uniform(rng, 2, 6);
        c.sk = Uniform(rng, c.sq, 10);
      });
      AddCase(method, "negative_v", cases, [](RandomCase& c, std::mt19937& rng) {
        c.heads = 2;
        c.v_shift = -8;
        c.v_scale = 1;
        c.w_scale = 2;
        c.sq = c.sk = Uniform(rng, 4, 10);
      });
      break;
  }
}

std::vector<DiffCase> AllDiffCases() {
  std::vector<DiffCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    AddCommonCases(method, cases);
    AddMethodCases(method, cases);
  }
  return cases;
}

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
