// The attention variants of attention-variants.md 1-5 on both engines
// (kFast, once per ISA under the `isa` label, and kPlain), every method:
//
// GqaTest: grouped-query and multi-query attention give exactly the
// results of the same call with each key/value head repeated for its query
// heads (Hugging Face's repeat_kv), for q/k/v methods bit for bit, for the
// absolute methods (whose k, v projections then have another width) to
// float rounding; with the key lengths, a window and a softcap on top.
// MaskTest: key lengths and windows (causal and symmetric) give the
// double reference's probabilities of the unmasked call, restricted to the
// visible keys and renormalised (softmax's identity), and for the methods
// whose output is P v, that output; rows that see no key are all zeros,
// never NaN; key blocks hidden by the window are skipped (a window call of
// 1/8 of the keys runs in well under the time of the full call).
// SoftcapTest: none with a softcap against a float64 computation of
// c * tanh(scale * q.k / c) here, and every method's softcap leaves the
// order of logits alone (a monotone map: the argmax of each probs row
// stays), with masked keys still at zero.
// VariantRulesTest: the field-naming INVALID_ARGUMENT rules of 1, 2, 3, 5.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/isa.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::Engine;
using kernels::MethodKind;
using kernels::Tensor;
using ::testing::HasSubstr;

bool IsAbsolute(MethodKind method) {
  return method == MethodKind::kSinusoidal || method == MethodKind::kLearned;
}

kernels::ComputeOptions Options(Engine engine, int threads = 1) {
  kernels::ComputeOptions options;
  options.engine = engine;
  options.threads = threads;
  return options;
}

std::string EngineName(Engine engine) { return engine == Engine::kFast ? "fast" : "plain"; }

// A request of `method` with the geometry of c; RoPE gets an even D.
kernels::AttendArgs Request(MethodKind method, RandomCase c, uint32_t seed) {
  c.method = method;
  if (method == MethodKind::kRope && c.d % 2 != 0) c.d += 1;
  if (method == MethodKind::kTransformerXL) c.d_rel = 6;
  std::mt19937 rng(seed);
  return RandomAttendArgs(c, rng);
}

// The same request with every key/value head repeated for its group of
// query heads: k, v [B, H, Sk, *] for the q/k/v methods, the column blocks
// of w_k, w_v for the absolute ones (num_kv_heads unset).
kernels::AttendArgs RepeatKvHeads(const kernels::AttendArgs& args, int64_t heads,
                                  int64_t kv_heads) {
  kernels::AttendArgs repeated = args;
  const int64_t group = heads / kv_heads;
  if (IsAbsolute(args.method)) {
    repeated.num_kv_heads = 0;
    for (const char* name : {"w_k", "w_v"}) {
      const Tensor& w = args.inputs.at(name);
      const int64_t rows = w.dim(0), width = w.dim(1) / kv_heads;
      Tensor out({rows, heads * width});
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t e = 0; e < width; ++e) {
            out.data()[r * heads * width + h * width + e] =
                w.data()[r * kv_heads * width + (h / group) * width + e];
          }
        }
      }
      repeated.inputs[name] = std::move(out);
    }
    return repeated;
  }
  for (const char* name : {"k", "v"}) {
    const Tensor& t = args.inputs.at(name);
    const int64_t batch = t.dim(0), seq = t.dim(2), width = t.dim(3);
    Tensor out({batch, heads, seq, width});
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t h = 0; h < heads; ++h) {
        const float* src = t.data() + ((b * kv_heads + h / group) * seq) * width;
        std::copy_n(src, seq * width, out.data() + ((b * heads + h) * seq) * width);
      }
    }
    repeated.inputs[name] = std::move(out);
  }
  return repeated;
}

double MaxDifference(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  double worst = 0;
  for (int64_t n = 0; n < a.size(); ++n) {
    worst = std::max(worst, std::fabs(static_cast<double>(a.data()[n]) - b.data()[n]));
  }
  return worst;
}

struct GqaCase {
  MethodKind method;
  Engine engine;
  int64_t heads, kv_heads;
  bool causal;
  bool with_masks;  // kv_lengths, a window and a softcap as well
};

void PrintTo(const GqaCase& c, std::ostream* os) {
  *os << kernels::MethodName(c.method) << "/" << EngineName(c.engine) << " H=" << c.heads
      << " H_kv=" << c.kv_heads << (c.causal ? " causal" : "") << (c.with_masks ? " masks" : "");
}

std::vector<GqaCase> GqaCases() {
  std::vector<GqaCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    for (Engine engine : {Engine::kFast, Engine::kPlain}) {
      cases.push_back({method, engine, 4, 2, true, false});
      cases.push_back({method, engine, 6, 1, false, false});  // multi-query
      cases.push_back({method, engine, 4, 2, false, true});
      cases.push_back({method, engine, 3, 1, true, true});
    }
  }
  return cases;
}

class GqaTest : public ::testing::TestWithParam<GqaCase> {};

TEST_P(GqaTest, EqualsTheCallWithKvHeadsRepeated) {
  const GqaCase& g = GetParam();
  RandomCase c;
  c.batch = 2;
  c.heads = g.heads;
  c.kv_heads = g.kv_heads;
  c.sq = 100;  // two query blocks of the fast engine (96 rows each)
  c.sk = 260;  // two key tiles (256 keys each)
  c.d = c.dv = 16;
  c.d_model = 24;
  c.causal = g.causal;
  if (g.with_masks) {
    c.kv_lengths = {260, 171};
    c.window = 100;
    c.softcap = 2.5;
  }
  const uint32_t seed = 1400 + static_cast<uint32_t>(g.method) * 10 + g.heads;
  std::cout << "seed " << seed << "\n";
  kernels::AttendArgs args = Request(g.method, c, seed);
  args.return_probs = true;
  const kernels::AttendArgs repeated = RepeatKvHeads(args, g.heads, g.kv_heads);
  for (int threads : {1, 2}) {
    auto got = kernels::Attend(args, Options(g.engine, threads));
    ASSERT_TRUE(got.ok()) << got.status();
    auto want = kernels::Attend(repeated, Options(g.engine, threads));
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got->out.shape(), (std::vector<int64_t>{2, g.heads, c.sq, c.dv}));
    // The projections of the absolute methods differ in width (oneDNN may
    // block them differently); every other method must give the same bits.
    const double tolerance = IsAbsolute(g.method) ? 2e-6 : 0.0;
    EXPECT_LE(MaxDifference(got->out, want->out), tolerance) << "threads=" << threads;
    EXPECT_LE(MaxDifference(*got->probs, *want->probs), tolerance) << "threads=" << threads;
  }
}

std::string GqaName(const ::testing::TestParamInfo<GqaCase>& info) {
  const GqaCase& c = info.param;
  return absl::StrCat(kernels::MethodName(c.method), "_", EngineName(c.engine), "_h", c.heads,
                      "_kv", c.kv_heads, c.causal ? "_causal" : "", c.with_masks ? "_masks" : "");
}

INSTANTIATE_TEST_SUITE_P(AllMethods, GqaTest, ::testing::ValuesIn(GqaCases()), GqaName);

// ---------------------------------------------------------------------------
// Key lengths and windows.

struct MaskCase {
  MethodKind method;
  Engine engine;
  bool causal;
  std::optional<int64_t> window;
  bool lengths;
  int64_t sq, sk;
  std::optional<int64_t> query_offset;
};

void PrintTo(const MaskCase& c, std::ostream* os) {
  *os << kernels::MethodName(c.method) << "/" << EngineName(c.engine) << " sq" << c.sq << " sk"
      << c.sk << (c.causal ? " causal" : "") << " window=" << c.window.value_or(0)
      << (c.lengths ? " lengths" : "");
}

std::vector<MaskCase> MaskCases() {
  std::vector<MaskCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    for (Engine engine : {Engine::kFast, Engine::kPlain}) {
      cases.push_back({method, engine, true, 37, false, 200, 270, std::nullopt});
      cases.push_back({method, engine, false, 37, false, 200, 200, std::nullopt});
      cases.push_back({method, engine, false, std::nullopt, true, 120, 290, std::nullopt});
      cases.push_back({method, engine, true, std::nullopt, true, 120, 290, std::nullopt});
      // Everything at once, with cached keys and an explicit offset that
      // leaves the first rows of batch element 1 without any key.
      cases.push_back({method, engine, true, 20, true, 110, 300, 180});
      cases.push_back({method, engine, false, 200, true, 100, 400, 100});
      // Queries far past the keys: every window lies beyond Sk (regression:
      // the fast engine read key tiles past Sk for such rows).
      cases.push_back({method, engine, true, 10, false, 50, 100, 300});
      // A window wider than the keys: the same as none.
      cases.push_back({method, engine, true, 5000, false, 40, 70, std::nullopt});
    }
  }
  return cases;
}

class MaskTest : public ::testing::TestWithParam<MaskCase> {};

// softmax restricted to a subset S of keys: p'_j = p_j / sum_{k in S} p_k
// for j in S, 0 elsewhere, where p is the softmax over a superset of S.
TEST_P(MaskTest, EqualsTheReferenceRestrictedToTheVisibleKeys) {
  const MaskCase& m = GetParam();
  RandomCase c;
  c.batch = 2;
  c.heads = 2;
  c.kv_heads = 1;
  c.sq = m.sq;
  c.sk = m.sk;
  c.query_offset = m.query_offset;
  c.d = c.dv = 12;
  c.d_model = 16;
  c.causal = m.causal;
  if (m.method == MethodKind::kDaTransformer) c.w_scale = 0.05;
  const uint32_t seed = 1450 + static_cast<uint32_t>(m.method);
  std::cout << "seed " << seed << "\n";
  const kernels::AttendArgs unmasked = Request(m.method, c, seed);
  kernels::AttendArgs args = unmasked;
  if (m.lengths) args.kv_lengths = {m.sk - 3, m.sk / 3};
  args.window = m.window;
  // The reference of the unmasked call; kv heads repeated (GQA is checked
  // above) so that this test does not rely on the reference knowing GQA.
  const kernels::AttendArgs plain_heads =
      c.kv_heads == c.heads ? unmasked : RepeatKvHeads(unmasked, c.heads, c.kv_heads);
  auto ref = ReferenceAttend(plain_heads);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const RefTensor& full = ref->at("probs");
  const int64_t offset = m.query_offset.value_or(m.sk - m.sq);
  const auto visible = [&](int64_t b, int64_t i, int64_t j) {
    const int64_t p = offset + i;
    bool seen = true;
    if (m.causal) seen = seen && j <= p;
    if (!args.kv_lengths.empty()) seen = seen && j < args.kv_lengths[static_cast<size_t>(b)];
    if (m.window) {
      seen = seen && (m.causal ? p - *m.window < j : std::llabs(p - j) < *m.window);
    }
    return seen;
  };
  RefTensor want_probs{full.shape, std::vector<double>(full.data.size(), 0.0)};
  int64_t empty_rows = 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t i = 0; i < c.sq; ++i) {
        const int64_t row = ((b * c.heads + h) * c.sq + i) * c.sk;
        double mass = 0;
        for (int64_t j = 0; j < c.sk; ++j) {
          if (visible(b, i, j)) mass += full.data[row + j];
        }
        if (mass == 0) ++empty_rows;
        for (int64_t j = 0; j < c.sk; ++j) {
          if (visible(b, i, j)) want_probs.data[row + j] = full.data[row + j] / mass;
        }
      }
    }
  }
  std::cout << "rows that see no key: " << empty_rows << "\n";
  // out = P' v for the q/k/v methods without a value term.
  const bool out_is_pv = !IsAbsolute(m.method) && m.method != MethodKind::kShaw;
  RefTensor want_out{{c.batch, c.heads, c.sq, c.dv},
                     std::vector<double>(static_cast<size_t>(c.batch * c.heads * c.sq * c.dv))};
  if (out_is_pv) {
    const Tensor& v = unmasked.inputs.at("v");
    const int64_t group = c.heads / c.kv_heads;
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t h = 0; h < c.heads; ++h) {
        for (int64_t i = 0; i < c.sq; ++i) {
          const int64_t row = (b * c.heads + h) * c.sq + i;
          for (int64_t j = 0; j < c.sk; ++j) {
            const double p = want_probs.data[row * c.sk + j];
            if (p == 0) continue;
            const float* v_row = v.data() + ((b * c.kv_heads + h / group) * c.sk + j) * c.dv;
            for (int64_t e = 0; e < c.dv; ++e) want_out.data[row * c.dv + e] += p * v_row[e];
          }
        }
      }
    }
  }
  for (bool return_probs : {true, false}) {
    kernels::AttendArgs call = args;
    call.return_probs = return_probs;
    auto got = kernels::Attend(std::move(call), Options(m.engine, 2));
    ASSERT_TRUE(got.ok()) << got.status();
    if (return_probs) {
      EXPECT_EQ(CompareToReference("probs", *got->probs, want_probs, 1e-4, 1e-5), "");
    }
    if (out_is_pv) {
      EXPECT_EQ(CompareToReference("out", got->out, want_out, 1e-4, 1e-5), "")
          << (return_probs ? "with probs" : "without probs");
    }
    // Rows that see no key: zeros, never NaN (attention-variants.md 4).
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t h = 0; h < c.heads; ++h) {
        for (int64_t i = 0; i < c.sq; ++i) {
          bool any = false;
          for (int64_t j = 0; j < c.sk && !any; ++j) any = visible(b, i, j);
          if (any) continue;
          const float* out_row = got->out.data() + ((b * c.heads + h) * c.sq + i) * c.dv;
          for (int64_t e = 0; e < c.dv; ++e) {
            ASSERT_EQ(out_row[e], 0.0f) << "b" << b << " h" << h << " i" << i;
          }
        }
      }
    }
  }
}

std::string MaskName(const ::testing::TestParamInfo<MaskCase>& info) {
  const MaskCase& c = info.param;
  return absl::StrCat(kernels::MethodName(c.method), "_", EngineName(c.engine), "_",
                      c.causal ? "causal" : "symmetric", "_w", c.window.value_or(0),
                      c.lengths ? "_lengths" : "", "_sq", c.sq, "_sk", c.sk);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, MaskTest, ::testing::ValuesIn(MaskCases()), MaskName);

// The key blocks a window or the lengths hide are never read: NaN in every
// key and value no query can see (with the inputs' own scan switched off, so
// only the engine's reads could find them) must leave the output finite and
// equal to the call with ordinary values there. A block the engine computed
// and then masked would bring 0 * NaN into the output. (How much time the
// skipping saves is a benchmark: variants_bench, docs/PERFORMANCE.md.)
struct HiddenKeysCase {
  const char* name;
  bool causal;
  std::optional<int64_t> window;
  std::vector<int64_t> kv_lengths;
  int64_t hidden_begin, hidden_end;  // keys no query sees, of every batch element
};

class HiddenKeysTest : public ::testing::TestWithParam<Engine> {};

TEST_P(HiddenKeysTest, HiddenKeyBlocksAreNeverRead) {
  // 128 queries at positions 1920..2047 of 2048 keys.
  const HiddenKeysCase cases[] = {
      {"causal window 128", true, 128, {}, 0, 1700},
      {"symmetric window 100", false, 100, {}, 0, 1700},
      {"kv_lengths 700 and 900", false, std::nullopt, {700, 900}, 900, 2048},
  };
  for (const HiddenKeysCase& hidden : cases) {
    RandomCase c;
    c.batch = 2;
    c.heads = 2;
    c.sq = 128;
    c.sk = 2048;
    c.d = c.dv = 32;
    c.causal = hidden.causal;
    kernels::AttendArgs clean = Request(MethodKind::kNone, c, 1499);
    clean.query_offset = 1920;
    clean.window = hidden.window;
    clean.kv_lengths = hidden.kv_lengths;
    kernels::AttendArgs poisoned = clean;
    for (const char* name : {"k", "v"}) {
      kernels::Tensor& t = poisoned.inputs.at(name);
      const int64_t width = t.shape()[3];
      for (int64_t bh = 0; bh < c.batch * c.heads; ++bh) {
        float* head = t.data() + bh * c.sk * width;
        std::fill(head + hidden.hidden_begin * width, head + hidden.hidden_end * width,
                  std::numeric_limits<float>::quiet_NaN());
      }
    }
    kernels::ComputeOptions options = Options(GetParam(), 2);
    options.inputs_checked = true;
    auto want = kernels::Attend(clean, options);
    auto got = kernels::Attend(poisoned, options);
    ASSERT_TRUE(want.ok()) << hidden.name << ": " << want.status();
    ASSERT_TRUE(got.ok()) << hidden.name << ": a hidden key was read: " << got.status();
    EXPECT_EQ(got->out.values(), want->out.values()) << hidden.name;
  }
}

INSTANTIATE_TEST_SUITE_P(BothEngines, HiddenKeysTest,
                         ::testing::Values(Engine::kFast, Engine::kPlain),
                         [](const auto& param_info) { return EngineName(param_info.param); });

// ---------------------------------------------------------------------------
// Softcap.

class SoftcapTest : public ::testing::TestWithParam<Engine> {};

TEST_P(SoftcapTest, NoneMatchesAFloat64SoftcappedSoftmax) {
  RandomCase c;
  c.batch = 1;
  c.heads = 4;
  c.kv_heads = 2;
  c.sq = 150;
  c.sk = 280;
  c.d = c.dv = 16;
  c.causal = true;
  c.scale = 3.0;  // logits up to ~10: the cap of 2 bends them hard
  c.softcap = 2.0;
  c.window = 90;
  kernels::AttendArgs args = Request(MethodKind::kNone, c, 1477);
  const Tensor& q = args.inputs.at("q");
  const Tensor& k = args.inputs.at("k");
  const Tensor& v = args.inputs.at("v");
  const int64_t offset = c.sk - c.sq;
  RefTensor want_out{{1, c.heads, c.sq, c.dv},
                     std::vector<double>(static_cast<size_t>(c.heads * c.sq * c.dv))};
  RefTensor want_probs{{1, c.heads, c.sq, c.sk},
                       std::vector<double>(static_cast<size_t>(c.heads * c.sq * c.sk))};
  for (int64_t h = 0; h < c.heads; ++h) {
    const int64_t g = h / 2;
    for (int64_t i = 0; i < c.sq; ++i) {
      const int64_t p = offset + i;
      std::vector<double> logits(static_cast<size_t>(c.sk), -INFINITY);
      double max = -INFINITY;
      for (int64_t j = std::max<int64_t>(0, p - 89); j <= p; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < c.d; ++e) {
          dot += static_cast<double>(q.data()[(h * c.sq + i) * c.d + e]) *
                 k.data()[(g * c.sk + j) * c.d + e];
        }
        logits[j] = 2.0 * std::tanh(3.0 * dot / 2.0);
        max = std::max(max, logits[j]);
      }
      double sum = 0;
      for (double& x : logits) sum += (x = std::exp(x - max));
      const int64_t row = h * c.sq + i;
      for (int64_t j = 0; j < c.sk; ++j) {
        const double w = logits[j] / sum;
        want_probs.data[row * c.sk + j] = w;
        for (int64_t e = 0; e < c.dv; ++e) {
          want_out.data[row * c.dv + e] += w * v.data()[(g * c.sk + j) * c.dv + e];
        }
      }
    }
  }
  for (bool return_probs : {false, true}) {
    kernels::AttendArgs call = args;
    call.return_probs = return_probs;
    auto got = kernels::Attend(std::move(call), Options(GetParam(), 2));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(CompareToReference("out", got->out, want_out, 1e-4, 1e-5), "");
    if (return_probs) {
      EXPECT_EQ(CompareToReference("probs", *got->probs, want_probs, 1e-4, 1e-5), "");
    }
  }
}

// tanh is increasing: the softcap keeps the order of every row's logits,
// so each probs row keeps its argmax, gets flatter (its max falls), and
// masked keys stay at zero.
TEST_P(SoftcapTest, EveryMethodKeepsTheOrderOfLogits) {
  for (MethodKind method : kernels::kAllMethods) {
    RandomCase c;
    c.heads = 2;
    c.sq = c.sk = 40;
    c.d = c.dv = 8;
    c.d_model = 16;
    c.causal = true;
    c.scale = 4.0;
    kernels::AttendArgs args = Request(method, c, 1488);
    auto plain = kernels::Attend(args, Options(GetParam()));
    ASSERT_TRUE(plain.ok()) << plain.status();
    args.softcap = 1.0;
    auto capped = kernels::Attend(args, Options(GetParam()));
    ASSERT_TRUE(capped.ok()) << capped.status();
    const Tensor& a = *plain->probs;
    const Tensor& b = *capped->probs;
    for (int64_t row = 0; row < a.size() / c.sk; ++row) {
      const float* x = a.data() + row * c.sk;
      const float* y = b.data() + row * c.sk;
      const int64_t i = row % c.sq;
      int64_t arg_x = 0, arg_y = 0;
      for (int64_t j = 0; j < c.sk; ++j) {
        if (x[j] > x[arg_x]) arg_x = j;
        if (y[j] > y[arg_y]) arg_y = j;
        if (j > i) {
          ASSERT_EQ(y[j], 0.0f) << kernels::MethodName(method);
        }
      }
      // Ties at float precision may pick another key of the same logit.
      EXPECT_TRUE(arg_x == arg_y || std::fabs(y[arg_x] - y[arg_y]) < 1e-6)
          << kernels::MethodName(method) << " row " << row;
      EXPECT_LE(y[arg_y], x[arg_x] + 1e-6f) << kernels::MethodName(method) << " row " << row;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BothEngines, SoftcapTest,
                         ::testing::Values(Engine::kFast, Engine::kPlain),
                         [](const ::testing::TestParamInfo<Engine>& param) {
                           return EngineName(param.param);
                         });

// ---------------------------------------------------------------------------
// The rules.

void ExpectInvalid(const kernels::AttendArgs& args, const std::string& field,
                   const std::string& what) {
  for (Engine engine : {Engine::kFast, Engine::kPlain}) {
    auto got = kernels::Attend(args, Options(engine));
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
        << what << " " << EngineName(engine) << ": " << got.status();
    EXPECT_THAT(std::string(got.status().message()), HasSubstr(field))
        << what << " " << EngineName(engine);
  }
}

TEST(VariantRulesTest, BadValuesAreInvalidNamingTheField) {
  for (MethodKind method : kernels::kAllMethods) {
    RandomCase c;
    c.batch = 2;
    c.heads = 4;
    c.kv_heads = 2;
    c.sq = c.sk = 5;
    c.d = c.dv = 4;
    c.d_model = 8;
    const std::string name(kernels::MethodName(method));
    const kernels::AttendArgs good = Request(method, c, 1);
    ASSERT_TRUE(kernels::Attend(good, Options(Engine::kFast)).ok()) << name;

    kernels::AttendArgs args = good;
    args.kv_lengths = {5};
    ExpectInvalid(args, "kv_lengths", name + " one length for B=2");
    args.kv_lengths = {5, 0};
    ExpectInvalid(args, "kv_lengths", name + " length 0");
    args.kv_lengths = {6, 5};
    ExpectInvalid(args, "kv_lengths", name + " length above Sk");
    args = good;
    args.window = 0;
    ExpectInvalid(args, "window", name + " window 0");
    args.window = -3;
    ExpectInvalid(args, "window", name + " window -3");
    args = good;
    for (double cap : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
      args.softcap = cap;
      ExpectInvalid(args, "softcap", absl::StrCat(name, " softcap ", cap));
    }
    args = good;
    if (IsAbsolute(method)) {
      args.num_kv_heads = 3;
      ExpectInvalid(args, "num_kv_heads", name + " num_kv_heads not dividing H");
      args.num_kv_heads = 1;  // w_k, w_v still hold 2 heads
      ExpectInvalid(args, "w_k.shape", name + " num_kv_heads not matching w_k");
    } else {
      args.num_kv_heads = 1;
      ExpectInvalid(args, "num_kv_heads", name + " num_kv_heads != k.shape[1]");
      RandomCase odd = c;
      odd.kv_heads = 3;
      ExpectInvalid(Request(method, odd, 1), "k.shape", name + " H % H_kv != 0");
    }
  }
}

}  // namespace
}  // namespace attnserve::testing
