// generate_golden_variants: writes the project's own format-2 golden cases
// (attention-variants.md 9, decode-sessions.md 4) into tests/golden-generated/,
// from fixed seeds and the float64 reference (tests/testing/reference.h), or
// checks that the checked-in files are exactly what it would write.
//
//   generate_golden_variants --out=DIR     write DIR/*.json and DIR/manifest.json
//   generate_golden_variants --check=DIR   byte-for-byte comparison (exit 1 on any
//                                          difference, missing or extra file)
//
// Coverage (issue 14, "Correctness"): every method x GQA and MQA, kv_lengths,
// causal and symmetric windows, softcap, rows that see no key, float16 and
// bfloat16 in and out; every new RoPE scaling in Encode and Attend (defaults,
// explicit parameters, partial rotary_dim, dynamic NTK below and above L0);
// ALiBi custom slopes; a decode session per method (GQA, window, softcap,
// prefill, single steps, truncate); and the errors of each.
//
// Determinism: inputs come from std::mt19937 (a fixed algorithm) mapped to
// floats by integer arithmetic only, one printed seed per case; expected
// values are the reference's doubles rounded to 12 significant digits (far
// below every tolerance), so a last-bit difference of libm between machines
// is very unlikely to change a file. Error cases' codes and fields are
// written from the spec and, where the reference can see the rule, checked
// against it before writing; every attend and decode case must keep the
// float32 emulation within a quarter of its tolerance (spec 9.3).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/testing/golden.h"
#include "tests/testing/golden_kernels.h"
#include "tests/testing/half_float.h"
#include "tests/testing/naive_float32.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr uint32_t kBaseSeed = 140000;

// ---------------------------------------------------------------------------
// Values.

double Round12(double x) {
  if (x == 0) return 0.0;  // also folds -0.0
  char text[40];
  std::snprintf(text, sizeof text, "%.12g", x);
  return std::strtod(text, nullptr);
}

class Rng {
 public:
  explicit Rng(uint32_t seed) : engine_(seed) {}
  // Uniform in [lo, hi): 24 random bits, exact arithmetic, one rounding.
  float Uniform(double lo, double hi) {
    const double unit = static_cast<double>(engine_() >> 8) * 0x1p-24;
    return static_cast<float>(lo + (hi - lo) * unit);
  }

 private:
  std::mt19937 engine_;
};

struct TensorSpec {
  std::vector<int64_t> shape;
  std::vector<float> values;
  GoldenDtype dtype = GoldenDtype::kFloat32;
};

Json ToJson(const TensorSpec& t) {
  Json j;
  j["shape"] = t.shape;
  Json data = Json::array();
  for (float x : t.values) data.push_back(static_cast<double>(x));
  j["data"] = std::move(data);
  if (t.dtype != GoldenDtype::kFloat32) j["dtype"] = GoldenDtypeName(t.dtype);
  return j;
}

Json ToJson(const RefTensor& t) {
  Json j;
  j["shape"] = t.shape;
  Json data = Json::array();
  for (double x : t.data) data.push_back(Round12(x));
  j["data"] = std::move(data);
  return j;
}

// ---------------------------------------------------------------------------
// One case under construction.

struct Case {
  std::string name, op, method, description;
  uint32_t seed = 0;
  Json params = Json::object();
  std::map<std::string, TensorSpec> inputs;  // written in name order
  std::map<std::string, Json> raw_inputs;    // error cases: "wire"/"raw_hex" tensors
  Json steps = Json::array();                // decode: without expected values yet
  std::vector<std::map<std::string, TensorSpec>> step_inputs;
  std::string expect_error;
  std::vector<std::string> expect_field;
  // The reference cannot see the rule (a wire rule): expect_error is written
  // as given, unchecked.
  bool wire_rule = false;
  Rng rng{0};  // seeded with `seed` by Catalogue::Add; every draw of the case
};

bool Absolute(const std::string& method) { return method == "sinusoidal" || method == "learned"; }
bool Rope(const std::string& method) { return method == "rope"; }

// Every key of positional-methods.md 3.2 for the op and method, plus format
// 2's, all null (= unset) or their defaults; callers set what they use.
Json BaseParams(const std::string& op, const std::string& method) {
  Json p;
  const auto rope_keys = [&] {
    p["layout"] = "interleaved";
    p["base"] = 10000.0;
    p["scaling"] = "none";
    p["scaling_factor"] = 1.0;
    p["rotary_dim"] = nullptr;
    for (const char* key : {"original_max_position", "beta_fast", "beta_slow", "attention_factor",
                            "low_freq_factor", "high_freq_factor"}) {
      p[key] = nullptr;
    }
  };
  const auto method_keys = [&] {
    if (method == "sinusoidal") p["base"] = 10000.0;
    if (Rope(method)) rope_keys();
    if (method == "transformer_xl") {
      p["base"] = 10000.0;
      p["d_rel"] = 6;
    }
    if (method == "shaw") p["max_relative_position"] = 2;
  };
  if (op == "attend") {
    p["causal"] = false;
    p["scale"] = nullptr;
    p["query_offset"] = nullptr;
    if (Absolute(method)) p["num_heads"] = nullptr;
    p["num_kv_heads"] = nullptr;
    p["kv_lengths"] = nullptr;
    p["window"] = nullptr;
    p["softcap"] = nullptr;
    p["output_dtype"] = "float32";
    method_keys();
  } else if (op == "encode") {
    if (method == "sinusoidal" || method == "learned" || Rope(method)) p["offset"] = 0;
    if (method == "shaw" || method == "alibi" || method == "da_transformer") {
      p["query_offset"] = nullptr;
      p["sq"] = 1;
      p["sk"] = 1;
    }
    if (method == "alibi") p["num_heads"] = 1;
    p["output_dtype"] = "float32";
    method_keys();
  } else {  // decode
    for (const char* key : {"batch", "num_heads", "num_kv_heads", "head_dim", "value_dim",
                            "max_len", "scale", "window", "softcap"}) {
      p[key] = nullptr;
    }
    p["output_dtype"] = "float32";
    method_keys();
  }
  return p;
}

// The geometry of an attend case.
struct Geometry {
  int64_t batch = 1, heads = 2, kv_heads = 2, sq = 3, sk = 5, d = 4, dv = 4, d_model = 8;
  int64_t table_rows = 0;  // learned: 0 = just enough + 2
};

class Builder {
 public:
  explicit Builder(Case* c) : c_(c) {}

  TensorSpec Random(std::vector<int64_t> shape, double lo = -1, double hi = 1) {
    TensorSpec t;
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    t.shape = std::move(shape);
    for (int64_t n = 0; n < count; ++n) t.values.push_back(c_->rng.Uniform(lo, hi));
    return t;
  }

  // The method's own tensors for H query heads (attention-variants.md 1:
  // per query head), and head sizes d, dv.
  void MethodTensors(int64_t heads, int64_t d, int64_t dv, int64_t d_model, int64_t table_rows,
                     std::map<std::string, TensorSpec>* out) {
    const std::string& m = c_->method;
    if (m == "learned") (*out)["table"] = Random({table_rows, d_model}, -0.5, 0.5);
    if (m == "transformer_xl") {
      const int64_t d_rel = c_->params["d_rel"].get<int64_t>();
      (*out)["pos_bias_u"] = Random({heads, d}, -0.5, 0.5);
      (*out)["pos_bias_v"] = Random({heads, d}, -0.5, 0.5);
      const double w = 1 / std::sqrt(static_cast<double>(d_rel));
      (*out)["w_r"] = Random({heads, d_rel, d}, -w, w);
    }
    if (m == "shaw") {
      const int64_t k = c_->params["max_relative_position"].get<int64_t>();
      (*out)["rel_k"] = Random({2 * k + 1, d}, -0.5, 0.5);
      (*out)["rel_v"] = Random({2 * k + 1, dv}, -0.5, 0.5);
    }
    if (m == "da_transformer") {
      (*out)["dist_w"] = Random({heads}, -1, 1);
      (*out)["dist_v"] = Random({heads}, -2, 2);
    }
  }

  void ProjectionWeights(int64_t heads, int64_t kv_heads, int64_t d, int64_t dv, int64_t d_model,
                         std::map<std::string, TensorSpec>* out) {
    const double w = 1 / std::sqrt(static_cast<double>(d_model));
    (*out)["w_q"] = Random({d_model, heads * d}, -w, w);
    (*out)["w_k"] = Random({d_model, kv_heads * d}, -w, w);
    (*out)["w_v"] = Random({d_model, kv_heads * dv}, -w, w);
  }

  // Every input of an attend case of geometry g.
  void AttendInputs(const Geometry& g) {
    auto& in = c_->inputs;
    if (Absolute(c_->method)) {
      in["x_q"] = Random({g.batch, g.sq, g.d_model});
      in["x_kv"] = Random({g.batch, g.sk, g.d_model});
      ProjectionWeights(g.heads, g.kv_heads, g.d, g.dv, g.d_model, &in);
      c_->params["num_heads"] = g.heads;
    } else {
      in["q"] = Random({g.batch, g.heads, g.sq, g.d});
      in["k"] = Random({g.batch, g.kv_heads, g.sk, g.d});
      in["v"] = Random({g.batch, g.kv_heads, g.sk, g.dv});
    }
    int64_t rows = g.table_rows;
    if (rows == 0) {
      const int64_t offset = c_->params.value("query_offset", Json()).is_null()
                                 ? g.sk - g.sq
                                 : c_->params["query_offset"].get<int64_t>();
      rows = std::max(offset + g.sq, g.sk) + 2;
    }
    MethodTensors(g.heads, g.d, g.dv, g.d_model, rows, &in);
  }

 private:
  Case* c_;
};

// Rounds the named inputs (all when empty) to `dtype` and marks them.
void SetDtype(Case* c, GoldenDtype dtype, std::vector<std::string> names = {}) {
  if (names.empty()) {
    for (const auto& [name, t] : c->inputs) names.push_back(name);
  }
  for (const std::string& name : names) {
    TensorSpec& t = c->inputs.at(name);
    for (float& x : t.values) x = RoundTo(dtype, x);
    t.dtype = dtype;
  }
}

// ---------------------------------------------------------------------------
// Evaluation: the case's JSON without expected values, through the loader
// (so the files are what the runners read), then the reference.

Json CaseJson(const Case& c) {
  Json j;
  j["format_version"] = 2;
  j["name"] = c.name;
  j["op"] = c.op;
  j["method"] = c.method;
  j["description"] = absl::StrCat(c.description, " (seed ", c.seed, ")");
  j["params"] = c.params;
  Json inputs = Json::object();
  for (const auto& [name, t] : c.inputs) inputs[name] = ToJson(t);
  for (const auto& [name, t] : c.raw_inputs) inputs[name] = t;
  j["inputs"] = std::move(inputs);
  if (c.op == "decode") j["steps"] = c.steps;
  if (!c.expect_error.empty()) {
    j["expect_error"] = c.expect_error;
    j["expect_field"] = c.expect_field;
  }
  return j;
}

[[noreturn]] void Fail(const Case& c, const std::string& why) {
  std::cerr << "generate_golden_variants: " << c.name << ": " << why << "\n";
  std::exit(2);
}

void CheckError(const Case& c, const absl::Status& status, const std::string& expect_error,
                const std::vector<std::string>& expect_field) {
  const std::string error =
      CheckExpectedError(expect_error, expect_field, status.code(), status.message());
  if (!error.empty()) Fail(c, "the reference disagrees with the expected error: " + error);
}

// attention-variants.md 9.3's margin, checked as the cases are generated: the
// float32 emulation (naive_float32.h) within a quarter of the tolerance on
// every tensor of an attend case (decode steps: their equivalent Attend), so
// a float32 engine has room to pass. Empty when it holds.
std::string NaiveMargin(const GoldenCase& g) {
  auto args = ToAttendArgs(g);
  if (!args.ok()) return std::string(args.status().message());
  auto naive = NaiveFloat32Attend(*args);
  if (!naive.ok()) return std::string(naive.status().message());
  std::string failures;
  for (const auto& [name, expected] : g.expected) {
    const kernels::Tensor& got = name == "out" ? naive->out : naive->probs;
    absl::StrAppend(&failures, CompareTensor(name, expected, got.shape(), got.values(), g.rtol / 4,
                                             g.atol / 4));
  }
  return failures;
}

void CheckMargin(const Case& c, const Json& j) {
  auto g = ParseGoldenCase(nlohmann::json::parse(j.dump()), c.name);
  if (!g.ok()) Fail(c, std::string(g.status().message()));
  if (!g->expect_error.empty() && g->op != "decode") return;
  std::string failures;
  if (g->op == "attend") failures = NaiveMargin(*g);
  if (g->op == "decode") {
    for (size_t n = 0; n < g->steps.size(); ++n) {
      if (g->steps[n].kind != "step" || !g->steps[n].expect_error.empty()) continue;
      auto attend = DecodeStepAsAttendCase(*g, n);
      if (!attend.ok()) Fail(c, std::string(attend.status().message()));
      absl::StrAppend(&failures, NaiveMargin(*attend));
    }
  }
  if (!failures.empty())
    Fail(c, "float32 emulation beyond a quarter of the tolerance: " + failures);
}

Json Evaluate(const Case& c) {
  Json j = CaseJson(c);
  auto parsed = ParseGoldenCase(nlohmann::json::parse(j.dump()), c.name);
  if (!parsed.ok()) Fail(c, std::string(parsed.status().message()));
  const GoldenCase& g = *parsed;
  const double rtol = c.op == "encode" ? 1e-5 : 1e-4, atol = c.op == "encode" ? 1e-6 : 1e-5;
  if (c.op == "decode") {
    auto open = ToRefDecodeOpen(g);
    if (!open.ok()) Fail(c, std::string(open.status().message()));
    auto session = ReferenceDecodeSession::Open(*std::move(open));
    if (g.steps.empty() || !session.ok()) {
      CheckError(c, session.status(), c.expect_error, c.expect_field);
    } else {
      for (size_t n = 0; n < g.steps.size(); ++n) {
        const GoldenStep& step = g.steps[n];
        Json& out = j["steps"][n];
        absl::Status status;
        if (step.kind == "truncate") {
          status = session->Truncate(step.length);
        } else {
          auto result = session->Step(ToTensors(step.inputs));
          status = result.status();
          if (result.ok() && step.expect_error.empty()) {
            Json expected;
            expected["out"] = ToJson(result->at("out"));
            if (step.return_probs) expected["probs"] = ToJson(result->at("probs"));
            out["expected"] = std::move(expected);
          }
        }
        if (!step.expect_error.empty()) {
          CheckError(c, status, step.expect_error, step.expect_field);
          if (n + 1 != g.steps.size()) Fail(c, "an error step before the last");
          break;
        }
        if (!status.ok()) Fail(c, absl::StrCat("steps[", n, "]: ", status.ToString()));
        out["expected_length"] = session->Length();
      }
    }
  } else if (c.wire_rule) {
    if (c.expect_error.empty()) Fail(c, "a wire rule case needs its expected error");
    j["expected"] = Json::object();
  } else {
    absl::StatusOr<RefOutputs> result;
    if (c.op == "attend") {
      auto args = ToAttendArgs(g);
      if (!args.ok()) Fail(c, std::string(args.status().message()));
      result = ReferenceAttend(*args);
    } else {
      auto args = ToEncodeArgs(g);
      if (!args.ok()) Fail(c, std::string(args.status().message()));
      result = ReferenceEncode(*args);
    }
    if (!c.expect_error.empty()) {
      CheckError(c, result.status(), c.expect_error, c.expect_field);
      j["expected"] = Json::object();
    } else {
      if (!result.ok()) Fail(c, result.status().ToString());
      Json expected = Json::object();
      for (const auto& [name, t] : *result) {
        expected[name] = ToJson(t);
      }
      j["expected"] = std::move(expected);
    }
  }
  j["tolerance"] = {{"rtol", rtol}, {"atol", atol}};
  CheckMargin(c, j);
  return j;
}

// ---------------------------------------------------------------------------
// The cases.

class Catalogue {
 public:
  // A new case; its seed is the next one.
  Case& Add(const std::string& name, const std::string& op, const std::string& method,
            const std::string& description) {
    cases_.emplace_back();
    Case& c = cases_.back();
    c.name = "gen_" + name;
    c.op = op;
    c.method = method;
    c.description = description;
    c.seed = kBaseSeed + static_cast<uint32_t>(cases_.size());
    c.rng = Rng(c.seed);
    c.params = BaseParams(op, method);
    return c;
  }
  const std::deque<Case>& cases() const { return cases_; }

 private:
  std::deque<Case> cases_;  // a deque: a Case& stays valid while others are added
};

const std::vector<std::string> kMethods = {
    "none", "sinusoidal", "learned", "rope", "transformer_xl", "shaw", "alibi", "da_transformer"};

std::string Short(const std::string& method) {
  if (method == "transformer_xl") return "txl";
  if (method == "da_transformer") return "da";
  return method;
}

// An attend case of method m with geometry g; `setup` sets params before the
// inputs are drawn (query_offset decides the learned table's size).
Case& AttendCase(Catalogue& cat, const std::string& name, const std::string& m,
                 const std::string& description, const Geometry& g,
                 const std::function<void(Case&)>& setup = nullptr) {
  Case& c = cat.Add(name, "attend", m, description);
  if (setup) setup(c);
  if (Absolute(m) && g.kv_heads != g.heads) c.params["num_kv_heads"] = g.kv_heads;
  Builder(&c).AttendInputs(g);
  return c;
}

void EveryMethodVariants(Catalogue& cat) {
  for (const std::string& m : kMethods) {
    const std::string s = Short(m);
    Geometry gqa;
    gqa.batch = 2, gqa.heads = 4, gqa.kv_heads = 2, gqa.sq = 3, gqa.sk = 6, gqa.d = 4, gqa.dv = 3;
    AttendCase(cat, "att_" + s + "_gqa_h4_kv2_causal", m,
               "GQA: H = 4 query heads over H_kv = 2 key/value heads, causal", gqa,
               [](Case& c) { c.params["causal"] = true; });

    Geometry mqa;
    mqa.batch = 2, mqa.heads = 3, mqa.kv_heads = 1, mqa.sq = 4, mqa.sk = 6, mqa.d = 4, mqa.dv = 4;
    AttendCase(cat, "att_" + s + "_mqa_h3_kv_lengths", m,
               "MQA (H_kv = 1, H = 3) with kv_lengths [6, 3], non-causal", mqa, [](Case& c) {
                 c.params["kv_lengths"] = {6, 3};
               });

    Geometry win;
    win.heads = 2, win.kv_heads = 2, win.sq = 4, win.sk = 9, win.d = 6, win.dv = 4;
    AttendCase(cat, "att_" + s + "_window_causal_w3", m,
               "causal window W = 3: queries at 5..8 over 9 cached keys", win, [](Case& c) {
                 c.params["causal"] = true;
                 c.params["window"] = 3;
               });

    Geometry sym;
    sym.heads = 2, sym.kv_heads = 1, sym.sq = 3, sym.sk = 8, sym.d = 4, sym.dv = 4;
    AttendCase(cat, "att_" + s + "_window_symmetric_w2", m,
               "symmetric window W = 2 (|p - j| < 2), explicit query_offset 2, MQA", sym,
               [](Case& c) {
                 c.params["window"] = 2;
                 c.params["query_offset"] = 2;
               });

    Geometry cap;
    cap.heads = 2, cap.kv_heads = 2, cap.sq = 3, cap.sk = 5, cap.d = 8, cap.dv = 4;
    AttendCase(cat, "att_" + s + "_softcap", m,
               "softcap 1.5 with scale 2 (logits well past the cap)", cap, [](Case& c) {
                 c.params["softcap"] = 1.5;
                 c.params["scale"] = 2.0;
               });

    Geometry empty;
    empty.batch = 2, empty.heads = 2, empty.kv_heads = 1, empty.sq = 3, empty.sk = 6, empty.d = 4,
    empty.dv = 3;
    AttendCase(cat, "att_" + s + "_empty_rows", m,
               "rows that see no key: causal window 2 at queries 3..5 with kv_lengths [6, 1] "
               "(batch 1's rows 4, 5 are empty: zero out and probs)",
               empty, [](Case& c) {
                 c.params["causal"] = true;
                 c.params["window"] = 2;
                 c.params["query_offset"] = 3;
                 c.params["kv_lengths"] = {6, 1};
               });

    Geometry half;
    half.heads = 2, half.kv_heads = 1, half.sq = 3, half.sk = 4, half.d = 4, half.dv = 4;
    Case& fp16 = AttendCase(cat, "att_" + s + "_fp16_in_fp16_out", m,
                            "every input float16 (raw_data), output float16, MQA", half);
    SetDtype(&fp16, GoldenDtype::kFloat16);
    fp16.params["output_dtype"] = "float16";
    Case& bf16 = AttendCase(cat, "att_" + s + "_bf16_in_bf16_out", m,
                            "every input bfloat16 (raw_data), output bfloat16, causal", half,
                            [](Case& c) { c.params["causal"] = true; });
    SetDtype(&bf16, GoldenDtype::kBfloat16);
    bf16.params["output_dtype"] = "bfloat16";
  }
  // Mixed: float32 q/k with a bfloat16 v and float16 output.
  Geometry g;
  g.heads = 2, g.kv_heads = 2, g.sq = 2, g.sk = 5;
  Case& mixed = AttendCase(cat, "att_none_mixed_dtypes", "none",
                           "q float32, k float16, v bfloat16; output bfloat16", g);
  SetDtype(&mixed, GoldenDtype::kFloat16, {"k"});
  SetDtype(&mixed, GoldenDtype::kBfloat16, {"v"});
  mixed.params["output_dtype"] = "bfloat16";
  // Absolute method with num_kv_heads equal to num_heads, and a q/k/v method
  // with num_kv_heads set equal to k.shape[1].
  Geometry same;
  same.heads = 2, same.kv_heads = 2;
  AttendCase(cat, "att_learned_num_kv_heads_equal", "learned", "num_kv_heads = num_heads = 2", same,
             [](Case& c) { c.params["num_kv_heads"] = 2; });
  Geometry explicit_kv;
  explicit_kv.heads = 6, explicit_kv.kv_heads = 2;
  AttendCase(cat, "att_alibi_num_kv_heads_explicit", "alibi",
             "num_kv_heads 2 set explicitly, equal to k.shape[1]; H = 6 (non-power-of-two slopes)",
             explicit_kv, [](Case& c) { c.params["num_kv_heads"] = 2; });
}

void RopeScalings(Catalogue& cat) {
  struct Scaling {
    std::string name, description;
    std::function<void(Json&)> set;
  };
  const std::vector<Scaling> scalings = {
      {"yarn_default", "YaRN s = 4, L0 = 8, default beta_fast/beta_slow/attention_factor",
       [](Json& p) {
         p["scaling"] = "yarn";
         p["scaling_factor"] = 4.0;
         p["original_max_position"] = 8;
       }},
      {"yarn_explicit", "YaRN s = 2.5, L0 = 16, beta_fast 8, beta_slow 2, attention_factor 1.3",
       [](Json& p) {
         p["scaling"] = "yarn";
         p["scaling_factor"] = 2.5;
         p["original_max_position"] = 16;
         p["beta_fast"] = 8.0;
         p["beta_slow"] = 2.0;
         p["attention_factor"] = 1.3;
       }},
      {"yarn_partial_rd6", "YaRN s = 3, L0 = 6, rotary_dim 6 of D = 10, half layout",
       [](Json& p) {
         p["scaling"] = "yarn";
         p["scaling_factor"] = 3.0;
         p["original_max_position"] = 6;
         p["rotary_dim"] = 6;
         p["layout"] = "half";
       }},
      {"llama3_default", "Llama 3 s = 8, L0 = 16, default low/high_freq_factor 1/4",
       [](Json& p) {
         p["scaling"] = "llama3";
         p["scaling_factor"] = 8.0;
         p["original_max_position"] = 16;
       }},
      {"llama3_explicit",
       "Llama 3 s = 2, L0 = 40, low_freq_factor 0.5, high_freq_factor 2, base 500",
       [](Json& p) {
         p["scaling"] = "llama3";
         p["scaling_factor"] = 2.0;
         p["original_max_position"] = 40;
         p["low_freq_factor"] = 0.5;
         p["high_freq_factor"] = 2.0;
         p["base"] = 500.0;
       }},
      {"dynamic_ntk_below_l0", "dynamic NTK s = 2 with the call shorter than L0 = 64: plain RoPE",
       [](Json& p) {
         p["scaling"] = "dynamic_ntk";
         p["scaling_factor"] = 2.0;
         p["original_max_position"] = 64;
       }},
      {"dynamic_ntk_above_l0", "dynamic NTK s = 3 with the call longer than L0 = 4",
       [](Json& p) {
         p["scaling"] = "dynamic_ntk";
         p["scaling_factor"] = 3.0;
         p["original_max_position"] = 4;
       }},
  };
  int index = 0;
  for (const Scaling& s : scalings) {
    Case& enc = cat.Add("enc_rope_" + s.name, "encode", "rope", s.description + "; Encode");
    s.set(enc.params);
    enc.params["offset"] = 3;
    const int64_t d = enc.params["rotary_dim"].is_null() ? 8 : 10;
    enc.inputs["x"] = Builder(&enc).Random({1, 2, 6, d});
    if (index % 3 == 1) {
      SetDtype(&enc, GoldenDtype::kFloat16);
      enc.description += ", x float16";
    }

    Geometry g;
    g.batch = 2, g.heads = 4, g.kv_heads = (index % 2 == 0) ? 2 : 1, g.sq = 3, g.sk = 7;
    g.d = d, g.dv = 3;
    AttendCase(cat, "att_rope_" + s.name, "rope",
               s.description + "; Attend, GQA " + std::to_string(g.kv_heads) + " kv heads, causal",
               g, [&](Case& c) {
                 s.set(c.params);
                 c.params["causal"] = true;
                 if (index % 3 == 2) c.params["query_offset"] = 9;  // beyond Sk - Sq
               });
    ++index;
  }
  // Encode outputs in 16-bit for the other encode forms.
  Case& sin = cat.Add("enc_sinusoidal_bf16_out", "encode", "sinusoidal",
                      "sinusoidal Encode, y and table as bfloat16");
  sin.params["offset"] = 5;
  sin.inputs["x"] = Builder(&sin).Random({2, 3, 6});
  sin.params["output_dtype"] = "bfloat16";
  Case& rope16 = cat.Add("enc_rope_yarn_fp16_out", "encode", "rope",
                         "YaRN Encode (s = 2, L0 = 4), x bfloat16 in, y float16 out");
  rope16.params["scaling"] = "yarn";
  rope16.params["scaling_factor"] = 2.0;
  rope16.params["original_max_position"] = 4;
  rope16.inputs["x"] = Builder(&rope16).Random({1, 1, 5, 6});
  SetDtype(&rope16, GoldenDtype::kBfloat16);
  rope16.params["output_dtype"] = "float16";
}

void AlibiSlopes(Catalogue& cat) {
  Case& enc = cat.Add("enc_alibi_slopes_h3", "encode", "alibi",
                      "custom slopes [0.5, 0, -0.25] (zero and negative): Encode returns them");
  enc.params["num_heads"] = 3;
  enc.params["sq"] = 2;
  enc.params["sk"] = 4;
  enc.params["query_offset"] = 2;
  enc.inputs["slopes"] = TensorSpec{{3}, {0.5f, 0.0f, -0.25f}};
  Case& enc16 = cat.Add("enc_alibi_slopes_fp16_out", "encode", "alibi",
                        "custom slopes float16 in, slopes and bias float16 out");
  enc16.params["num_heads"] = 2;
  enc16.params["sq"] = 3;
  enc16.params["sk"] = 3;
  enc16.inputs["slopes"] = TensorSpec{{2}, {0.75f, 0.125f}};
  SetDtype(&enc16, GoldenDtype::kFloat16);
  enc16.params["output_dtype"] = "float16";

  Geometry g;
  g.batch = 1, g.heads = 4, g.kv_heads = 2, g.sq = 4, g.sk = 6;
  Case& att =
      AttendCase(cat, "att_alibi_slopes_gqa_window", "alibi",
                 "custom slopes [1, 0, -0.5, 0.25], GQA 4/2, causal window 4", g, [](Case& c) {
                   c.params["causal"] = true;
                   c.params["window"] = 4;
                 });
  att.inputs["slopes"] = TensorSpec{{4}, {1.0f, 0.0f, -0.5f, 0.25f}};
}

// One decode session per method: prefill 3, two single steps, truncate to 2,
// a 2-token step; GQA, a causal window 3 and softcap 2.
void DecodeSessions(Catalogue& cat) {
  for (const std::string& m : kMethods) {
    Case& c = cat.Add("dec_" + Short(m) + "_gqa_window_softcap", "decode", m,
                      "session: prefill 3, 2 single steps, truncate to 2, step of 2; GQA 4/2, "
                      "window 3, softcap 2");
    const int64_t batch = 1, heads = 4, kv = 2, d = 4, dv = 3, d_model = 8, max_len = 8;
    c.params["batch"] = batch;
    c.params["num_heads"] = heads;
    c.params["num_kv_heads"] = kv;
    c.params["head_dim"] = d;
    c.params["value_dim"] = dv;
    c.params["max_len"] = max_len;
    c.params["window"] = 3;
    c.params["softcap"] = 2.0;
    if (Rope(m)) {
      c.params["scaling"] = "yarn";
      c.params["scaling_factor"] = 2.0;
      c.params["original_max_position"] = 4;
    }
    if (m == "da_transformer") c.params["output_dtype"] = "bfloat16";
    Builder b(&c);
    if (Absolute(m)) b.ProjectionWeights(heads, kv, d, dv, d_model, &c.inputs);
    b.MethodTensors(heads, d, dv, d_model, max_len, &c.inputs);
    if (m == "alibi") c.inputs["slopes"] = TensorSpec{{4}, {0.5f, 0.25f, 0.0f, -0.125f}};
    const auto step = [&](int64_t n, bool probs) {
      std::map<std::string, TensorSpec> in;
      if (Absolute(m)) {
        in["x"] = b.Random({batch, n, d_model});
      } else {
        in["q"] = b.Random({batch, heads, n, d});
        in["k"] = b.Random({batch, kv, n, d});
        in["v"] = b.Random({batch, kv, n, dv});
      }
      if (m == "none" && n == 1) {  // 16-bit step inputs in one session
        for (auto& [name, t] : in) {
          for (float& x : t.values) x = RoundTo(GoldenDtype::kFloat16, x);
          t.dtype = GoldenDtype::kFloat16;
        }
      }
      Json s;
      s["kind"] = "step";
      Json inputs = Json::object();
      for (const auto& [name, t] : in) inputs[name] = ToJson(t);
      s["inputs"] = std::move(inputs);
      s["return_probs"] = probs;
      c.steps.push_back(std::move(s));
    };
    step(3, true);
    step(1, false);
    step(1, true);
    c.steps.push_back(Json{{"kind", "truncate"}, {"length", 2}});
    step(2, true);
  }
}

// ---------------------------------------------------------------------------
// Errors.

Case& AttendError(Catalogue& cat, const std::string& name, const std::string& method,
                  const std::string& description, const Geometry& g,
                  const std::function<void(Case&)>& setup, const std::string& field,
                  const std::string& code = "invalid_argument") {
  Case& c = AttendCase(cat, name, method, description, g);
  setup(c);
  c.expect_error = code;
  c.expect_field = {field};
  return c;
}

std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (unsigned char ch : bytes) {
    hex.push_back(digits[ch >> 4]);
    hex.push_back(digits[ch & 15]);
  }
  return hex;
}

void Errors(Catalogue& cat) {
  Geometry g;
  g.heads = 2, g.kv_heads = 2, g.sq = 2, g.sk = 4;
  Geometry bad_kv = g;
  bad_kv.heads = 6, bad_kv.kv_heads = 4;
  Case& h = AttendError(
      cat, "err_att_rope_h_not_multiple_of_kv", "rope", "k has 4 heads for 6 query heads", bad_kv,
      [](Case&) {}, "k.shape");
  h.expect_field = {"k.shape", "num_kv_heads"};
  AttendError(
      cat, "err_att_none_num_kv_heads_mismatch", "none", "num_kv_heads 1 but k.shape[1] = 2", g,
      [](Case& c) { c.params["num_kv_heads"] = 1; }, "num_kv_heads");
  Geometry abs = g;
  abs.heads = 4, abs.kv_heads = 4;
  AttendError(
      cat, "err_att_learned_num_kv_heads_not_divisor", "learned",
      "num_kv_heads 3 does not divide num_heads 4", abs,
      [](Case& c) { c.params["num_kv_heads"] = 3; }, "num_kv_heads");
  Geometry two = g;
  two.batch = 2;
  AttendError(
      cat, "err_att_shaw_kv_lengths_count", "shaw", "3 kv_lengths for B = 2", two,
      [](Case& c) {
        c.params["kv_lengths"] = {4, 4, 4};
      },
      "kv_lengths");
  AttendError(
      cat, "err_att_txl_kv_lengths_zero", "transformer_xl", "kv_lengths [4, 0]", two,
      [](Case& c) {
        c.params["kv_lengths"] = {4, 0};
      },
      "kv_lengths");
  AttendError(
      cat, "err_att_da_kv_lengths_above_sk", "da_transformer", "kv_lengths [5, 2], Sk = 4", two,
      [](Case& c) {
        c.params["kv_lengths"] = {5, 2};
      },
      "kv_lengths");
  AttendError(
      cat, "err_att_alibi_window_zero", "alibi", "window 0", g,
      [](Case& c) { c.params["window"] = 0; }, "window");
  AttendError(
      cat, "err_att_sinusoidal_window_negative", "sinusoidal", "window -3", g,
      [](Case& c) { c.params["window"] = -3; }, "window");
  AttendError(
      cat, "err_att_shaw_softcap_negative", "shaw", "softcap -1", g,
      [](Case& c) { c.params["softcap"] = -1.0; }, "softcap");
  AttendError(
      cat, "err_att_da_softcap_nan", "da_transformer", "softcap NaN", g,
      [](Case& c) { c.params["softcap"] = "nan"; }, "softcap");
  AttendError(
      cat, "err_att_learned_softcap_minus_inf", "learned", "softcap -infinity", g,
      [](Case& c) { c.params["softcap"] = "-inf"; }, "softcap");

  // RoPE scaling rules.
  const auto rope = [&](const std::string& name, const std::string& description,
                        const std::function<void(Json&)>& set, const std::string& field) {
    AttendError(
        cat, "err_att_rope_" + name, "rope", description, g, [&](Case& c) { set(c.params); },
        field);
  };
  rope(
      "yarn_original_max_position_zero", "YaRN with original_max_position 0",
      [](Json& p) {
        p["scaling"] = "yarn";
        p["scaling_factor"] = 2.0;
        p["original_max_position"] = 0;
      },
      "original_max_position");
  rope(
      "dynamic_ntk_without_original_max_position", "dynamic NTK without original_max_position",
      [](Json& p) {
        p["scaling"] = "dynamic_ntk";
        p["scaling_factor"] = 2.0;
      },
      "original_max_position");
  rope(
      "yarn_scaling_factor_half", "YaRN with scaling_factor 0.5 (< 1)",
      [](Json& p) {
        p["scaling"] = "yarn";
        p["scaling_factor"] = 0.5;
        p["original_max_position"] = 8;
      },
      "scaling_factor");
  rope(
      "yarn_beta_fast_zero", "YaRN with beta_fast 0",
      [](Json& p) {
        p["scaling"] = "yarn";
        p["scaling_factor"] = 2.0;
        p["original_max_position"] = 8;
        p["beta_fast"] = 0.0;
      },
      "beta_fast");
  rope(
      "yarn_attention_factor_negative", "YaRN with attention_factor -1",
      [](Json& p) {
        p["scaling"] = "yarn";
        p["scaling_factor"] = 2.0;
        p["original_max_position"] = 8;
        p["attention_factor"] = -1.0;
      },
      "attention_factor");
  rope(
      "llama3_low_freq_factor_nan", "Llama 3 with low_freq_factor NaN",
      [](Json& p) {
        p["scaling"] = "llama3";
        p["scaling_factor"] = 2.0;
        p["original_max_position"] = 8;
        p["low_freq_factor"] = "nan";
      },
      "low_freq_factor");
  rope(
      "llama3_high_equals_low", "Llama 3 with high_freq_factor = low_freq_factor = 2",
      [](Json& p) {
        p["scaling"] = "llama3";
        p["scaling_factor"] = 2.0;
        p["original_max_position"] = 8;
        p["low_freq_factor"] = 2.0;
        p["high_freq_factor"] = 2.0;
      },
      "high_freq_factor");
  Case& rd2 = cat.Add("err_enc_rope_dynamic_ntk_rotary_dim_2", "encode", "rope",
                      "dynamic NTK with rotary_dim 2");
  rd2.params["scaling"] = "dynamic_ntk";
  rd2.params["scaling_factor"] = 2.0;
  rd2.params["original_max_position"] = 4;
  rd2.params["rotary_dim"] = 2;
  rd2.inputs["x"] = Builder(&rd2).Random({1, 1, 3, 4});
  rd2.expect_error = "invalid_argument";
  rd2.expect_field = {"rotary_dim"};

  // ALiBi slopes.
  Geometry three = g;
  three.heads = 3, three.kv_heads = 3;
  Case& len = AttendError(
      cat, "err_att_alibi_slopes_wrong_length", "alibi", "slopes of 2 values for H = 3", three,
      [](Case&) {}, "slopes");
  len.inputs["slopes"] = TensorSpec{{2}, {0.5f, 0.25f}};
  Case& nan = AttendError(
      cat, "err_att_alibi_slopes_nan", "alibi", "slope 0 is NaN (float32 raw_data)", g,
      [](Case&) {}, "slopes");
  nan.raw_inputs["slopes"] = Json{
      {"shape", {2}}, {"raw_hex", Hex(EncodeRaw({std::nanf(""), 0.5f}, GoldenDtype::kFloat32))}};
  Case& enc_len = cat.Add("err_enc_alibi_slopes_wrong_length", "encode", "alibi",
                          "Encode: slopes of 3 values for num_heads 2");
  enc_len.params["num_heads"] = 2;
  enc_len.params["sq"] = 2;
  enc_len.params["sk"] = 2;
  enc_len.inputs["slopes"] = TensorSpec{{3}, {0.5f, 0.25f, 0.125f}};
  enc_len.expect_error = "invalid_argument";
  enc_len.expect_field = {"slopes"};

  // Wire rules (the reference cannot see them; runners through attnd can).
  Case& on_data = AttendError(
      cat, "err_att_rope_bf16_dtype_on_data", "rope", "k says bfloat16 but travels in data", g,
      [](Case&) {}, "k.dtype");
  SetDtype(&on_data, GoldenDtype::kBfloat16, {"k"});
  {
    Json k = ToJson(on_data.inputs.at("k"));
    k["wire"] = "data";
    on_data.raw_inputs["k"] = k;
    on_data.inputs.erase("k");
  }
  on_data.wire_rule = true;
  Case& odd = AttendError(
      cat, "err_att_none_fp16_raw_length", "none", "v float16 raw_data one byte short", g,
      [](Case&) {}, "v.raw_data");
  {
    const TensorSpec v = odd.inputs.at("v");
    std::string bytes = EncodeRaw(v.values, GoldenDtype::kFloat16);
    bytes.pop_back();
    odd.raw_inputs["v"] = Json{{"shape", v.shape}, {"raw_hex", Hex(bytes)}, {"dtype", "float16"}};
    odd.inputs.erase("v");
    odd.expect_field = {"v.raw_data", "v.dtype"};
  }
  odd.wire_rule = true;
  Case& inf = AttendError(
      cat, "err_att_none_bf16_inf_input", "none",
      "q bfloat16 raw_data with +infinity at flat index 3", g, [](Case&) {}, "q.raw_data");
  {
    TensorSpec q = inf.inputs.at("q");
    q.values[3] = INFINITY;
    inf.raw_inputs["q"] = Json{{"shape", q.shape},
                               {"raw_hex", Hex(EncodeRaw(q.values, GoldenDtype::kBfloat16))},
                               {"dtype", "bfloat16"}};
    inf.inputs.erase("q");
  }
  inf.wire_rule = true;
  Case& no_raw = AttendError(
      cat, "err_att_alibi_bf16_output_without_raw_output", "alibi",
      "output_dtype bfloat16 with raw_output false", g, [](Case&) {}, "output_dtype");
  no_raw.params["output_dtype"] = "bfloat16";
  no_raw.params["raw_output"] = false;
  no_raw.wire_rule = true;
  Case& enc_raw = cat.Add("err_enc_sinusoidal_fp16_output_without_raw_output", "encode",
                          "sinusoidal", "Encode: output_dtype float16 with raw_output false");
  enc_raw.inputs["x"] = Builder(&enc_raw).Random({1, 2, 4});
  enc_raw.params["output_dtype"] = "float16";
  enc_raw.params["raw_output"] = false;
  enc_raw.expect_error = "invalid_argument";
  enc_raw.expect_field = {"output_dtype"};
  enc_raw.wire_rule = true;
}

void DecodeErrors(Catalogue& cat) {
  const auto open = [&](const std::string& name, const std::string& method,
                        const std::string& description) -> Case& {
    Case& c = cat.Add(name, "decode", method, description);
    c.params["batch"] = 1;
    c.params["num_heads"] = 2;
    c.params["head_dim"] = 4;
    c.params["value_dim"] = 4;
    c.params["max_len"] = 4;
    return c;
  };
  const auto qkv_step = [](Case& c, int64_t n, int64_t kv_heads) {
    Builder b(&c);
    Json s;
    s["kind"] = "step";
    s["inputs"] = {{"q", ToJson(b.Random({1, 2, n, 4}))},
                   {"k", ToJson(b.Random({1, kv_heads, n, 4}))},
                   {"v", ToJson(b.Random({1, kv_heads, n, 4}))}};
    s["return_probs"] = false;
    return s;
  };
  Case& past = open("dec_err_rope_step_past_max_len", "rope",
                    "2 then 3 tokens exceed max_len 4: OUT_OF_RANGE naming max_len");
  past.steps.push_back(qkv_step(past, 2, 2));
  Json last = qkv_step(past, 3, 2);
  last["expect_error"] = "out_of_range";
  last["expect_field"] = {"max_len"};
  past.steps.push_back(last);
  past.expect_error = "out_of_range";
  past.expect_field = {"max_len"};

  Case& negative = open("dec_err_none_truncate_negative", "none", "truncate to -1");
  negative.steps.push_back(qkv_step(negative, 2, 2));
  negative.steps.push_back(Json{{"kind", "truncate"},
                                {"length", -1},
                                {"expect_error", "invalid_argument"},
                                {"expect_field", {"truncate.length"}}});
  negative.expect_error = "invalid_argument";
  negative.expect_field = {"truncate.length"};

  Case& heads = open("dec_err_shaw_step_wrong_kv_heads", "shaw",
                     "num_kv_heads 1 but the step's k has 2 heads");
  heads.params["num_kv_heads"] = 1;
  Builder(&heads).MethodTensors(2, 4, 4, 0, 0, &heads.inputs);
  heads.steps.push_back(qkv_step(heads, 1, 1));
  last = qkv_step(heads, 1, 2);
  last["expect_error"] = "invalid_argument";
  last["expect_field"] = {"k.shape"};
  heads.steps.push_back(last);
  heads.expect_error = "invalid_argument";
  heads.expect_field = {"k.shape"};

  Case& ntk = open("dec_err_rope_dynamic_ntk_at_open", "rope",
                   "dynamic NTK is refused at open (its base needs the whole call's length)");
  ntk.params["scaling"] = "dynamic_ntk";
  ntk.params["scaling_factor"] = 2.0;
  ntk.params["original_max_position"] = 4;
  ntk.expect_error = "invalid_argument";
  ntk.expect_field = {"scaling"};

  Case& table = open("dec_err_learned_table_shorter_than_max_len", "learned",
                     "a learned table of 3 rows with max_len 4: OUT_OF_RANGE naming max_len");
  {
    Builder b(&table);
    b.ProjectionWeights(2, 2, 4, 4, 6, &table.inputs);
    b.MethodTensors(2, 4, 4, 6, 3, &table.inputs);
  }
  table.expect_error = "out_of_range";
  table.expect_field = {"max_len"};

  Case& divisor =
      open("dec_err_alibi_num_kv_heads_not_divisor", "alibi", "num_kv_heads 3 for num_heads 2");
  divisor.params["num_kv_heads"] = 3;
  divisor.expect_error = "invalid_argument";
  divisor.expect_field = {"num_kv_heads"};
}

std::vector<Case> AllCases() {
  Catalogue cat;
  EveryMethodVariants(cat);
  RopeScalings(cat);
  AlibiSlopes(cat);
  DecodeSessions(cat);
  Errors(cat);
  DecodeErrors(cat);
  return std::vector<Case>(cat.cases().begin(), cat.cases().end());
}

// ---------------------------------------------------------------------------
// Files.

std::map<std::string, std::string> Render() {
  std::map<std::string, std::string> files;
  Json manifest;
  manifest["format_version"] = 2;
  Json entries = Json::array();
  for (const Case& c : AllCases()) {
    const Json j = Evaluate(c);
    std::string text = j.dump() + "\n";
    if (files.count(c.name + ".json") > 0) Fail(c, "duplicate name");
    Json entry;
    entry["name"] = c.name;
    entry["op"] = c.op;
    entry["method"] = c.method;
    entry["expect_error"] = c.expect_error.empty() ? Json() : Json(c.expect_error);
    entry["bytes"] = text.size();
    entry["description"] = j["description"];
    entries.push_back(std::move(entry));
    files[c.name + ".json"] = std::move(text);
  }
  manifest["count"] = entries.size();
  manifest["generator"] =
      "tests/testing/generate_golden.cc (generate_golden_variants --out=tests/golden-generated)";
  manifest["cases"] = std::move(entries);
  files["manifest.json"] = manifest.dump(1) + "\n";
  return files;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int Write(const fs::path& dir, const std::map<std::string, std::string>& files) {
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".json" && files.count(entry.path().filename().string()) == 0) {
      fs::remove(entry.path());  // a case the generator no longer writes
    }
  }
  for (const auto& [name, text] : files) std::ofstream(dir / name, std::ios::binary) << text;
  std::cout << "wrote " << files.size() << " files to " << dir.string() << "\n";
  return 0;
}

int Check(const fs::path& dir, const std::map<std::string, std::string>& files) {
  int differences = 0;
  std::set<std::string> present;
  if (fs::is_directory(dir)) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() == ".json") present.insert(entry.path().filename().string());
    }
  }
  for (const auto& [name, text] : files) {
    if (present.count(name) == 0) {
      std::cout << "missing: " << name << "\n";
      ++differences;
    } else if (ReadFile(dir / name) != text) {
      std::cout << "differs: " << name << "\n";
      ++differences;
    }
  }
  for (const std::string& name : present) {
    if (files.count(name) == 0) {
      std::cout << "not generated: " << name << "\n";
      ++differences;
    }
  }
  if (differences > 0) {
    std::cout << differences << " difference(s); regenerate with "
              << "generate_golden_variants --out=" << dir.string() << "\n";
    return 1;
  }
  std::cout << files.size() << " files identical in " << dir.string() << "\n";
  return 0;
}

int Main(int argc, char** argv) {
  std::string out, check;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--out=")) {
      out = arg.substr(6);
    } else if (absl::StartsWith(arg, "--check=")) {
      check = arg.substr(8);
    } else {
      out.clear(), check.clear();
      break;
    }
  }
  if (out.empty() == check.empty()) {
    std::cerr << "usage: generate_golden_variants --out=DIR | --check=DIR\n";
    return 2;
  }
  const std::map<std::string, std::string> files = Render();
  return out.empty() ? Check(check, files) : Write(out, files);
}

}  // namespace
}  // namespace attnserve::testing

int main(int argc, char** argv) { return attnserve::testing::Main(argc, argv); }
