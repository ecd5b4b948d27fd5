#include "tests/kernels/random_args.h"

#include <algorithm>
#include <cmath>
#include <ostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve::testing {

using kernels::MethodKind;
using kernels::Tensor;

std::string RandomCase::Describe() const {
  std::string text = absl::StrCat("b", batch, " h", heads, " sq", sq, " sk", sk);
  if (method == MethodKind::kSinusoidal || method == MethodKind::kLearned) {
    absl::StrAppend(&text, " d_model", d_model);
  }
  absl::StrAppend(&text, " d", d, " dv", dv, causal ? " causal" : " noncausal");
  if (query_offset) absl::StrAppend(&text, " offset=", *query_offset);
  if (scale) absl::StrAppend(&text, " scale=", *scale);
  if (kv_heads > 0) absl::StrAppend(&text, " kv_heads=", kv_heads);
  if (!kv_lengths.empty()) absl::StrAppend(&text, " kv_lengths=", absl::StrJoin(kv_lengths, ","));
  if (window) absl::StrAppend(&text, " window=", *window);
  if (softcap) absl::StrAppend(&text, " softcap=", *softcap);
  switch (method) {
    case MethodKind::kRope:
      absl::StrAppend(&text, params.rope_layout == kernels::RopeLayout::kHalf ? " half"
                                                                               : " interleaved");
      switch (params.rope_scaling) {
        case kernels::RopeScaling::kNone: break;
        case kernels::RopeScaling::kLinear: absl::StrAppend(&text, " linear"); break;
        case kernels::RopeScaling::kNtk: absl::StrAppend(&text, " ntk"); break;
        case kernels::RopeScaling::kYarn: absl::StrAppend(&text, " yarn"); break;
        case kernels::RopeScaling::kLlama3: absl::StrAppend(&text, " llama3"); break;
        case kernels::RopeScaling::kDynamicNtk: absl::StrAppend(&text, " dynamic_ntk"); break;
      }
      if (params.scaling_factor) absl::StrAppend(&text, " factor=", *params.scaling_factor);
      if (params.rotary_dim) absl::StrAppend(&text, " rotary_dim=", *params.rotary_dim);
      if (params.original_max_position) {
        absl::StrAppend(&text, " L0=", *params.original_max_position);
      }
      if (params.beta_fast) absl::StrAppend(&text, " beta_fast=", *params.beta_fast);
      if (params.beta_slow) absl::StrAppend(&text, " beta_slow=", *params.beta_slow);
      if (params.attention_factor) {
        absl::StrAppend(&text, " attention_factor=", *params.attention_factor);
      }
      if (params.low_freq_factor) absl::StrAppend(&text, " low=", *params.low_freq_factor);
      if (params.high_freq_factor) absl::StrAppend(&text, " high=", *params.high_freq_factor);
      break;
    case MethodKind::kTransformerXL: absl::StrAppend(&text, " d_rel=", d_rel); break;
    case MethodKind::kShaw: absl::StrAppend(&text, " K=", max_relative_position); break;
    case MethodKind::kDaTransformer:
      absl::StrAppend(&text, " w_scale=", w_scale, " v_scale=", v_scale, " v_shift=", v_shift);
      break;
    case MethodKind::kLearned: absl::StrAppend(&text, " extra_rows=", extra_table_rows); break;
    case MethodKind::kAlibi:
      if (custom_slopes) absl::StrAppend(&text, " custom_slopes");
      break;
    case MethodKind::kNone:
    case MethodKind::kSinusoidal: break;
  }
  return text;
}

Tensor RandomTensor(std::vector<int64_t> shape, std::mt19937& rng, double lo, double hi) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<float> data(static_cast<size_t>(count));
  for (float& x : data) x = static_cast<float>(dist(rng));
  return Tensor(std::move(shape), std::move(data));
}

kernels::AttendArgs RandomAttendArgs(const RandomCase& c, std::mt19937& rng) {
  kernels::AttendArgs args;
  args.method = c.method;
  args.params = c.params;
  args.causal = c.causal;
  args.scale = c.scale;
  args.query_offset = c.query_offset;
  args.return_probs = true;
  args.kv_lengths = c.kv_lengths;
  args.window = c.window;
  args.softcap = c.softcap;
  const int64_t kv_heads = c.kv_heads > 0 ? c.kv_heads : c.heads;
  auto& in = args.inputs;
  if (c.method == MethodKind::kSinusoidal || c.method == MethodKind::kLearned) {
    const double w = 1.0 / std::sqrt(static_cast<double>(c.d_model));
    in["x_q"] = RandomTensor({c.batch, c.sq, c.d_model}, rng);
    in["x_kv"] = RandomTensor({c.batch, c.sk, c.d_model}, rng);
    in["w_q"] = RandomTensor({c.d_model, c.heads * c.d}, rng, -w, w);
    in["w_k"] = RandomTensor({c.d_model, kv_heads * c.d}, rng, -w, w);
    in["w_v"] = RandomTensor({c.d_model, kv_heads * c.dv}, rng, -w, w);
    args.num_heads = c.heads;
    args.num_kv_heads = c.kv_heads;
    if (c.method == MethodKind::kLearned) {
      const int64_t offset = c.query_offset.value_or(c.sk - c.sq);
      // An offset past 2^53 (the bound's own tests) fails before the table
      // is read: a small table then, without overflowing offset + sq.
      const int64_t last = offset > (int64_t{1} << 53) ? c.sk : std::max(offset + c.sq, c.sk);
      const int64_t max_len = last + c.extra_table_rows;
      in["table"] = RandomTensor({max_len, c.d_model}, rng);
    }
    return args;
  }
  in["q"] = RandomTensor({c.batch, c.heads, c.sq, c.d}, rng);
  in["k"] = RandomTensor({c.batch, kv_heads, c.sk, c.d}, rng);
  in["v"] = RandomTensor({c.batch, kv_heads, c.sk, c.dv}, rng);
  switch (c.method) {
    case MethodKind::kTransformerXL: {
      args.params.d_rel = c.d_rel;
      const double w = 1.0 / std::sqrt(static_cast<double>(c.d_rel));
      in["pos_bias_u"] = RandomTensor({c.heads, c.d}, rng, -0.5, 0.5);
      in["pos_bias_v"] = RandomTensor({c.heads, c.d}, rng, -0.5, 0.5);
      in["w_r"] = RandomTensor({c.heads, c.d_rel, c.d}, rng, -w, w);
      break;
    }
    case MethodKind::kShaw: {
      const int64_t rows = 2 * c.max_relative_position + 1;
      args.params.max_relative_position = c.max_relative_position;
      in["rel_k"] = RandomTensor({rows, c.d}, rng);
      in["rel_v"] = RandomTensor({rows, c.dv}, rng);
      break;
    }
    case MethodKind::kDaTransformer:
      in["dist_w"] = RandomTensor({c.heads}, rng, -c.w_scale, c.w_scale);
      in["dist_v"] =
          RandomTensor({c.heads}, rng, c.v_shift - c.v_scale, c.v_shift + c.v_scale);
      break;
    case MethodKind::kAlibi:
      if (c.custom_slopes) in["slopes"] = RandomTensor({c.heads}, rng, -0.25, 0.5);
      break;
    case MethodKind::kNone:
    case MethodKind::kSinusoidal:
    case MethodKind::kLearned:
    case MethodKind::kRope: break;
  }
  return args;
}

// ---------------------------------------------------------------------------
// The differential cases.

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

namespace {

// RoPE needs pairs: an odd D without rotary_dim gets rotary_dim = D - 1 (the
// partial-rotary way to use an odd head size); NTK and dynamic NTK need
// rotary_dim > 2.
void FixUpRope(RandomCase& c) {
  if (c.method != MethodKind::kRope) return;
  if (c.d < 2) c.d = 2;
  const bool ntk = c.params.rope_scaling == kernels::RopeScaling::kNtk ||
                   c.params.rope_scaling == kernels::RopeScaling::kDynamicNtk;
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

}  // namespace

// Geometries spanning several of the fast engine's query and key blocks
// (96 x 256), with a partial last block and Dv not a multiple of 16; added
// after all the others so the earlier seeds keep their cases.
void AddMultiBlockCases(MethodKind method, std::vector<DiffCase>& cases) {
  for (const bool causal : {true, false}) {
    DiffCase d;
    d.c.method = method;
    d.label = causal ? "multi_block_causal" : "multi_block_cross_offset";
    d.seed = static_cast<uint32_t>(1000 * (static_cast<int>(method) + 1) + cases.size());
    std::mt19937 rng(d.seed);
    d.c.heads = 2;
    d.c.sq = Uniform(rng, 190, 300);
    d.c.sk = causal ? d.c.sq : Uniform(rng, 520, 600);
    if (!causal) d.c.query_offset = Uniform(rng, 0, 700);
    d.c.d = 16;
    d.c.dv = 20;
    d.c.d_model = 24;
    d.c.causal = causal;
    FixUpRope(d.c);
    cases.push_back(d);
  }
}

// attention-variants.md 7: RoPE's yarn, llama3 and dynamic_ntk (L0 below and
// above the call's positions, the spec's defaults or explicit parameters,
// half the cases partial) and ALiBi's custom slopes. Drawn after every other
// case, so those keep the seeds they had before these were added.
void AddVariantCases(std::vector<DiffCase>& cases) {
  {
    const MethodKind method = MethodKind::kRope;
    const kernels::RopeLayout layouts[] = {kernels::RopeLayout::kInterleaved,
                                           kernels::RopeLayout::kHalf};
    const kernels::RopeScaling extensions[] = {kernels::RopeScaling::kYarn,
                                               kernels::RopeScaling::kLlama3,
                                               kernels::RopeScaling::kDynamicNtk};
    for (kernels::RopeLayout layout : layouts) {
      for (kernels::RopeScaling scaling : extensions) {
        for (bool explicit_params : {false, true}) {
          const std::string label =
              absl::StrCat(layout == kernels::RopeLayout::kHalf ? "half" : "interleaved", "_",
                           scaling == kernels::RopeScaling::kYarn     ? "yarn"
                           : scaling == kernels::RopeScaling::kLlama3 ? "llama3"
                                                                      : "dynamic_ntk",
                           explicit_params ? "_explicit" : "_defaults");
          AddCase(method, label, cases, [&](RandomCase& c, std::mt19937& rng) {
            c.params.rope_layout = layout;
            c.params.rope_scaling = scaling;
            c.params.scaling_factor = UniformReal(rng, 1.0, 16.0);
            c.params.original_max_position = Uniform(rng, 4, 64);
            c.d = 2 * Uniform(rng, 2, 8);
            c.dv = Uniform(rng, 2, 10);
            if (Uniform(rng, 0, 1) == 1) c.params.rotary_dim = 2 * Uniform(rng, 2, c.d / 2);
            c.heads = Uniform(rng, 1, 3);
            c.sq = Uniform(rng, 2, 8);
            c.sk = Uniform(rng, c.sq, 40);
            if (Uniform(rng, 0, 1) == 1) c.query_offset = Uniform(rng, 0, 3000);
            c.causal = Uniform(rng, 0, 1) == 1;
            if (scaling == kernels::RopeScaling::kDynamicNtk) {
              // L = max(Sk, query_offset + Sq) (>= 2) above L0 in the "defaults"
              // case (base' > base), at most L0 in the "explicit" one.
              const int64_t length = std::max(c.sk, c.query_offset.value_or(c.sk - c.sq) + c.sq);
              c.params.original_max_position = explicit_params
                                                   ? Uniform(rng, length, 2 * length)
                                                   : Uniform(rng, 1, length - 1);
            }
            if (!explicit_params) return;
            if (scaling == kernels::RopeScaling::kYarn) {
              c.params.beta_fast = UniformReal(rng, 4, 64);
              c.params.beta_slow = UniformReal(rng, 0.25, 4);
              c.params.attention_factor = UniformReal(rng, 0.5, 2);
            } else if (scaling == kernels::RopeScaling::kLlama3) {
              c.params.low_freq_factor = UniformReal(rng, 0.5, 2);
              c.params.high_freq_factor = *c.params.low_freq_factor + UniformReal(rng, 0.5, 8);
            }
          });
        }
      }
    }
  }
  {
    const MethodKind method = MethodKind::kAlibi;
    for (bool causal : {false, true}) {
      AddCase(method, causal ? "custom_slopes_causal" : "custom_slopes", cases,
              [causal](RandomCase& c, std::mt19937& rng) {
                c.custom_slopes = true;
                c.heads = Uniform(rng, 1, 6);
                c.sq = Uniform(rng, 2, 8);
                c.sk = Uniform(rng, c.sq, 30);
                c.d = Uniform(rng, 2, 8);
                c.causal = causal;
                if (Uniform(rng, 0, 1) == 1) c.query_offset = Uniform(rng, 0, 50);
              });
    }
  }
}

std::vector<DiffCase> AllDiffCases() {
  std::vector<DiffCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    AddCommonCases(method, cases);
    AddMethodCases(method, cases);
  }
  for (MethodKind method : kernels::kAllMethods) AddMultiBlockCases(method, cases);
  AddVariantCases(cases);
  return cases;
}

}  // namespace attnserve::testing
