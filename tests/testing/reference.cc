#include "tests/testing/reference.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;
using kernels::TensorMap;

// Local status plumbing: the reference deliberately does not include the
// kernels' status_macros.h.
#define REF_RETURN_IF_ERROR(expr)              \
  do {                                         \
    const ::absl::Status ref_status_ = (expr); \
    if (!ref_status_.ok()) return ref_status_; \
  } while (0)

absl::Status Invalid(absl::string_view a, absl::string_view b = "", absl::string_view c = "") {
  return absl::InvalidArgumentError(absl::StrCat(a, b, c));
}

std::string Name(MethodKind kind) {
  switch (kind) {
    case MethodKind::kNone:
      return "none";
    case MethodKind::kSinusoidal:
      return "sinusoidal";
    case MethodKind::kLearned:
      return "learned";
    case MethodKind::kRope:
      return "rope";
    case MethodKind::kTransformerXL:
      return "transformer_xl";
    case MethodKind::kShaw:
      return "shaw";
    case MethodKind::kAlibi:
      return "alibi";
    case MethodKind::kDaTransformer:
      return "da_transformer";
  }
  return "unknown";
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// ---------------------------------------------------------------------------
// Input validation (positional-methods.md 1.1, 1.7; api.md "Which inputs an
// op takes").

// Every tensor must be well formed (dims >= 1, data matching the shape) and
// finite; the op must take it; every required one must be present.
absl::Status CheckInputSet(const TensorMap& inputs, const std::vector<std::string>& required,
                           const std::vector<std::string>& optional, const std::string& what) {
  for (const auto& [name, tensor] : inputs) {
    const bool known = std::find(required.begin(), required.end(), name) != required.end() ||
                       std::find(optional.begin(), optional.end(), name) != optional.end();
    if (!known) return Invalid(name, ": not an input of ", what);
  }
  for (const std::string& name : required) {
    if (inputs.find(name) == inputs.end()) return Invalid(name, ": required by ", what);
  }
  for (const auto& [name, tensor] : inputs) {
    int64_t count = 1;
    for (int64_t d : tensor.shape()) {
      if (d < 1) return Invalid(name, ".shape: every dimension must be >= 1");
      count *= d;
    }
    if (count != tensor.size()) return Invalid(name, ".data: size does not match the shape");
    for (float x : tensor.values()) {
      if (!std::isfinite(x)) return Invalid(name, ".data: values must be finite");
    }
  }
  return absl::OkStatus();
}

// `expected` lists the required dimensions; -1 accepts any.
absl::Status ExpectShape(const Tensor& t, const std::string& name,
                         const std::vector<int64_t>& expected) {
  bool ok = t.shape().size() == expected.size();
  for (size_t a = 0; ok && a < expected.size(); ++a) {
    ok = expected[a] < 0 || expected[a] == t.shape()[a];
  }
  if (ok) return absl::OkStatus();
  return Invalid(name, ".shape: expected ",
                 absl::StrCat(ShapeText(expected), " (-1: any), got ", ShapeText(t.shape())));
}

absl::StatusOr<double> ResolvePositiveParam(std::optional<double> value, double fallback,
                                            const std::string& name) {
  if (!value) return fallback;
  if (!std::isfinite(*value) || !(*value > 0)) return Invalid(name, ": must be finite and > 0");
  return *value;
}

absl::StatusOr<int64_t> ResolveOffset(std::optional<int64_t> offset, int64_t sq, int64_t sk) {
  const int64_t resolved = offset.has_value() ? *offset : sk - sq;
  if (resolved < 0) return Invalid("query_offset: must be >= 0 (default Sk - Sq)");
  return resolved;
}

absl::StatusOr<double> ResolveScaleParam(std::optional<double> scale, int64_t d) {
  if (!scale) return 1.0 / std::sqrt(static_cast<double>(d));
  if (!std::isfinite(*scale)) return Invalid("scale: must be finite");
  return *scale;
}

std::vector<double> ToDouble(const Tensor& t) {
  return std::vector<double>(t.values().begin(), t.values().end());
}

// ---------------------------------------------------------------------------
// RoPE parameters (positional-methods.md 2.4; attention-variants.md 7).

constexpr double kPi = 3.14159265358979323846;

struct RopeSetup {
  bool half = false;
  int64_t r = 0;
  double position_divisor = 1;  // scaling_factor under linear scaling
  std::vector<double> freq;     // the r/2 frequencies f'_i actually used
  double mscale = 1;            // YaRN's attention_factor on the rotated dimensions
};

// Hugging Face's modeling_rope_utils.py, _compute_llama3_parameters, as
// attention-variants.md 7 states it: wavelengths shorter than
// L0/high_freq_factor keep their frequency, longer than L0/low_freq_factor
// are divided by s, and the band between is a linear blend in L0/w.
double Llama3Frequency(double f, double s, double l0, double low, double high) {
  const double w = 2 * kPi / f;
  if (w < l0 / high) return f;
  if (w > l0 / low) return f / s;
  const double a = (l0 / w - low) / (high - low);
  return (1 - a) * f / s + a * f;
}

// YaRN (Peng et al. 2023, eq. 17-19; Hugging Face _compute_yarn_parameters):
// dimension pairs below the correction dim of beta_fast rotate as trained
// (extrapolation), above that of beta_slow interpolate (f / s), a linear ramp
// between.
std::vector<double> YarnFrequencies(const std::vector<double>& f, double s, double l0, double base,
                                    double beta_fast, double beta_slow, int64_t r) {
  const auto correction_dim = [&](double n) {
    return static_cast<double>(r) * std::log(l0 / (2 * kPi * n)) / (2 * std::log(base));
  };
  const double lo = std::max(std::floor(correction_dim(beta_fast)), 0.0);
  const double hi = std::min(std::ceil(correction_dim(beta_slow)), static_cast<double>(r - 1));
  const double span = lo == hi ? hi + 0.001 - lo : hi - lo;
  std::vector<double> out;
  for (size_t i = 0; i < f.size(); ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - lo) / span, 0.0, 1.0);
    const double e = 1 - ramp;  // the extrapolation share
    out.push_back((f[i] / s) * (1 - e) + f[i] * e);
  }
  return out;
}

// `length` is the call's L for dynamic NTK: max(Sk, query_offset + Sq) for
// Attend, offset + S for Encode.
absl::StatusOr<RopeSetup> MakeRopeSetup(const kernels::MethodParams& params, int64_t d,
                                        int64_t length) {
  RopeSetup s;
  s.half = params.rope_layout == kernels::RopeLayout::kHalf;
  auto base = ResolvePositiveParam(params.base, 10000.0, "base");
  if (!base.ok()) return base.status();
  auto factor = ResolvePositiveParam(params.scaling_factor, 1.0, "scaling_factor");
  if (!factor.ok()) return factor.status();
  s.r = params.rotary_dim.value_or(d);
  if (s.r % 2 != 0 || s.r < 2 || s.r > d) {
    return Invalid("rotary_dim: must be even with 2 <= rotary_dim <= D");
  }
  const double r = static_cast<double>(s.r);
  const auto frequencies = [&](double b) {
    std::vector<double> f;
    for (int64_t n = 0; n < s.r / 2; ++n)
      f.push_back(std::pow(b, -2.0 * static_cast<double>(n) / r));
    return f;
  };
  const kernels::RopeScaling scaling = params.rope_scaling;
  const bool extended = scaling == kernels::RopeScaling::kYarn ||
                        scaling == kernels::RopeScaling::kLlama3 ||
                        scaling == kernels::RopeScaling::kDynamicNtk;
  double l0 = 0;
  if (extended) {
    if (!params.original_max_position || *params.original_max_position < 1) {
      return Invalid(
          "original_max_position: required (>= 1) by the yarn, llama3 and "
          "dynamic_ntk scalings");
    }
    l0 = static_cast<double>(*params.original_max_position);
    if (*factor < 1) return Invalid("scaling_factor: must be >= 1 for this scaling");
  }
  switch (scaling) {
    case kernels::RopeScaling::kNone:
      s.freq = frequencies(*base);
      break;
    case kernels::RopeScaling::kLinear:
      s.position_divisor = *factor;
      s.freq = frequencies(*base);
      break;
    case kernels::RopeScaling::kNtk:
      if (s.r == 2) return Invalid("rotary_dim: NTK scaling is undefined for rotary_dim = 2");
      s.freq = frequencies(*base * std::pow(*factor, r / (r - 2)));
      break;
    case kernels::RopeScaling::kDynamicNtk: {
      if (s.r == 2) return Invalid("rotary_dim: dynamic NTK is undefined for rotary_dim = 2");
      double b = *base;
      const double len = static_cast<double>(length);
      if (len > l0) b = *base * std::pow(*factor * len / l0 - (*factor - 1), r / (r - 2));
      s.freq = frequencies(b);
      break;
    }
    case kernels::RopeScaling::kLlama3: {
      auto low = ResolvePositiveParam(params.low_freq_factor, 1.0, "low_freq_factor");
      if (!low.ok()) return low.status();
      auto high = ResolvePositiveParam(params.high_freq_factor, 4.0, "high_freq_factor");
      if (!high.ok()) return high.status();
      if (!(*low < *high)) return Invalid("high_freq_factor: must be > low_freq_factor");
      for (double f : frequencies(*base)) {
        s.freq.push_back(Llama3Frequency(f, *factor, l0, *low, *high));
      }
      break;
    }
    case kernels::RopeScaling::kYarn: {
      auto beta_fast = ResolvePositiveParam(params.beta_fast, 32.0, "beta_fast");
      if (!beta_fast.ok()) return beta_fast.status();
      auto beta_slow = ResolvePositiveParam(params.beta_slow, 1.0, "beta_slow");
      if (!beta_slow.ok()) return beta_slow.status();
      auto mscale = ResolvePositiveParam(params.attention_factor, 0.1 * std::log(*factor) + 1,
                                         "attention_factor");
      if (!mscale.ok()) return mscale.status();
      s.freq = YarnFrequencies(frequencies(*base), *factor, l0, *base, *beta_fast, *beta_slow, s.r);
      s.mscale = *mscale;
      break;
    }
  }
  return s;
}

// Rotates row[0 .. D-1] (complex form: (x_a + i x_b) * mscale * exp(i phi_n));
// dimensions r .. D-1 stay as they are.
void Rotate(const RopeSetup& s, double position, double* row) {
  const double pos = position / s.position_divisor;
  const int64_t pairs = s.r / 2;
  for (int64_t n = 0; n < pairs; ++n) {
    const double phi = pos * s.freq[static_cast<size_t>(n)];
    const int64_t a = s.half ? n : 2 * n;
    const int64_t b = s.half ? n + pairs : 2 * n + 1;
    const double xa = row[a], xb = row[b];
    const double c = s.mscale * std::cos(phi), sn = s.mscale * std::sin(phi);
    row[a] = xa * c - xb * sn;
    row[b] = xb * c + xa * sn;
  }
}

// ---------------------------------------------------------------------------
// The attention core (1.2 - 1.5) on double q, k, v, with the method's score
// and (Shaw) value term as callbacks.

struct Problem {
  int64_t batch = 0, heads = 0, kv_heads = 0, sq = 0, sk = 0, d = 0, dv = 0;
  int64_t offset = 0;
  bool causal = false;
  double scale = 1;
  std::vector<int64_t> kv_lengths;  // empty: every key valid
  std::optional<int64_t> window;
  std::optional<double> softcap;
  std::vector<double> q, k, v;  // [B,H,Sq,D], [B,H_kv,Sk,D], [B,H_kv,Sk,Dv]

  // Query head h reads key/value head h / (H / H_kv) (attention-variants.md 1).
  int64_t KvHead(int64_t h) const { return h / (heads / kv_heads); }
  const double* QRow(int64_t b, int64_t h, int64_t i) const {
    return q.data() + ((b * heads + h) * sq + i) * d;
  }
  const double* KRow(int64_t b, int64_t h, int64_t j) const {
    return k.data() + ((b * kv_heads + KvHead(h)) * sk + j) * d;
  }
  const double* VRow(int64_t b, int64_t h, int64_t j) const {
    return v.data() + ((b * kv_heads + KvHead(h)) * sk + j) * dv;
  }
  // Causal mask, key lengths and window by logical AND (sections 2, 3).
  bool Visible(int64_t b, int64_t i, int64_t j) const {
    const int64_t pos = offset + i;
    if (causal && j > pos) return false;
    if (!kv_lengths.empty() && j >= kv_lengths[static_cast<size_t>(b)]) return false;
    if (window) {
      if (causal ? !(pos - *window < j) : !(std::abs(pos - j) < *window)) return false;
    }
    return true;
  }
};

// kv_lengths, window and softcap (attention-variants.md 2, 3, 5) onto p,
// whose batch and sk are known.
absl::Status ResolveVariants(const kernels::AttendArgs& args, Problem* p) {
  if (!args.kv_lengths.empty()) {
    if (static_cast<int64_t>(args.kv_lengths.size()) != p->batch) {
      return Invalid("kv_lengths: must be empty or hold B = ", std::to_string(p->batch), " values");
    }
    for (int64_t length : args.kv_lengths) {
      if (length < 1 || length > p->sk)
        return Invalid("kv_lengths: every value must be in [1, Sk]");
    }
  }
  if (args.window && *args.window < 1) return Invalid("window: must be >= 1");
  if (args.softcap && !(std::isfinite(*args.softcap) && *args.softcap > 0)) {
    return Invalid("softcap: must be finite and > 0");
  }
  p->kv_lengths = args.kv_lengths;
  p->window = args.window;
  p->softcap = args.softcap;
  return absl::OkStatus();
}

double Dot(const double* a, const double* b, int64_t n) {
  double sum = 0;
  for (int64_t e = 0; e < n; ++e) sum += a[e] * b[e];
  return sum;
}

// score(b, h, i, j) with the raw dot product q_i . k_j supplied.
using ScoreFn = std::function<double(int64_t b, int64_t h, int64_t i, int64_t j, double dot)>;
// Adds p * term(i, j) to out[0 .. Dv-1].
using ValueTermFn = std::function<void(int64_t i, int64_t j, double p, double* out)>;

RefOutputs RunAttention(const Problem& p, const ScoreFn& score, const ValueTermFn& value_term) {
  RefOutputs result;
  RefTensor& out = result["out"];
  RefTensor& probs = result["probs"];
  out.shape = {p.batch, p.heads, p.sq, p.dv};
  out.data.assign(static_cast<size_t>(p.batch * p.heads * p.sq * p.dv), 0.0);
  probs.shape = {p.batch, p.heads, p.sq, p.sk};
  probs.data.assign(static_cast<size_t>(p.batch * p.heads * p.sq * p.sk), 0.0);
  std::vector<double> s(static_cast<size_t>(p.sk));
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      for (int64_t i = 0; i < p.sq; ++i) {
        std::vector<bool> masked(static_cast<size_t>(p.sk));
        double m = -std::numeric_limits<double>::infinity();
        bool any = false;
        for (int64_t j = 0; j < p.sk; ++j) {
          masked[j] = !p.Visible(b, i, j);
          if (masked[j]) continue;
          s[j] = score(b, h, i, j, Dot(p.QRow(b, h, i), p.KRow(b, h, j), p.d));
          // Gemma 2's soft cap on the final pre-softmax value (section 5).
          if (p.softcap) s[j] = *p.softcap * std::tanh(s[j] / *p.softcap);
          m = std::max(m, s[j]);
          any = true;
        }
        // A row that sees no key is all zeros, out and probs (section 4).
        if (!any) continue;
        double sum = 0;
        for (int64_t j = 0; j < p.sk; ++j) {
          if (!masked[j]) sum += std::exp(s[j] - m);
        }
        const int64_t row = (b * p.heads + h) * p.sq + i;
        double* prob_row = probs.data.data() + row * p.sk;
        double* out_row = out.data.data() + row * p.dv;
        for (int64_t j = 0; j < p.sk; ++j) {
          if (masked[j]) continue;
          prob_row[j] = std::exp(s[j] - m) / sum;
          const double* v_row = p.VRow(b, h, j);
          for (int64_t e = 0; e < p.dv; ++e) out_row[e] += prob_row[j] * v_row[e];
          if (value_term) value_term(i, j, prob_row[j], out_row);
        }
      }
    }
  }
  return result;
}

// q, k, v given per head: shapes (1.1), num_heads, scale, query_offset.
absl::StatusOr<Problem> QkvProblem(const kernels::AttendArgs& args) {
  const Tensor& q = args.inputs.at("q");
  const Tensor& k = args.inputs.at("k");
  const Tensor& v = args.inputs.at("v");
  REF_RETURN_IF_ERROR(ExpectShape(q, "q", {-1, -1, -1, -1}));
  Problem p;
  p.batch = q.dim(0);
  p.heads = q.dim(1);
  p.sq = q.dim(2);
  p.d = q.dim(3);
  REF_RETURN_IF_ERROR(ExpectShape(k, "k", {p.batch, -1, -1, p.d}));
  p.kv_heads = k.dim(1);
  p.sk = k.dim(2);
  if (p.heads % p.kv_heads != 0) {
    return Invalid("k.shape: H_kv = k.shape[1] must divide H = q.shape[1]");
  }
  REF_RETURN_IF_ERROR(ExpectShape(v, "v", {p.batch, p.kv_heads, p.sk, -1}));
  p.dv = v.dim(3);
  if (args.num_heads != 0 && args.num_heads != p.heads) {
    return Invalid("num_heads: must be 0 or the H of q");
  }
  if (args.num_kv_heads != 0 && args.num_kv_heads != p.kv_heads) {
    return Invalid("num_kv_heads: must be 0 or k.shape[1]");
  }
  REF_RETURN_IF_ERROR(ResolveVariants(args, &p));
  auto scale = ResolveScaleParam(args.scale, p.d);
  if (!scale.ok()) return scale.status();
  auto offset = ResolveOffset(args.query_offset, p.sq, p.sk);
  if (!offset.ok()) return offset.status();
  p.scale = *scale;
  p.offset = *offset;
  p.causal = args.causal;
  p.q = ToDouble(q);
  p.k = ToDouble(k);
  p.v = ToDouble(v);
  return p;
}

// The absolute methods (2.2, 2.3): inputs before projection.
struct Projection {
  int64_t batch = 0, sq = 0, sk = 0, d_model = 0, heads = 0, kv_heads = 0, d = 0, dv = 0;
};

absl::StatusOr<Projection> CheckProjection(const kernels::AttendArgs& args) {
  const Tensor& x_q = args.inputs.at("x_q");
  const Tensor& x_kv = args.inputs.at("x_kv");
  const Tensor& w_q = args.inputs.at("w_q");
  const Tensor& w_k = args.inputs.at("w_k");
  const Tensor& w_v = args.inputs.at("w_v");
  REF_RETURN_IF_ERROR(ExpectShape(x_q, "x_q", {-1, -1, -1}));
  Projection g;
  g.batch = x_q.dim(0);
  g.sq = x_q.dim(1);
  g.d_model = x_q.dim(2);
  REF_RETURN_IF_ERROR(ExpectShape(x_kv, "x_kv", {g.batch, -1, g.d_model}));
  g.sk = x_kv.dim(1);
  REF_RETURN_IF_ERROR(ExpectShape(w_q, "w_q", {g.d_model, -1}));
  if (args.num_heads < 1) return Invalid("num_heads: required (>= 1) for absolute methods");
  g.heads = args.num_heads;
  // num_kv_heads: H_kv of w_k and w_v, 0 meaning H (attention-variants.md 1).
  g.kv_heads = args.num_kv_heads == 0 ? g.heads : args.num_kv_heads;
  if (g.kv_heads < 1 || g.heads % g.kv_heads != 0) {
    return Invalid("num_kv_heads: must be 0 or a divisor of num_heads");
  }
  if (w_q.dim(1) % g.heads != 0) return Invalid("w_q.shape: width not divisible by num_heads");
  g.d = w_q.dim(1) / g.heads;
  REF_RETURN_IF_ERROR(ExpectShape(w_k, "w_k", {g.d_model, g.kv_heads * g.d}));
  REF_RETURN_IF_ERROR(ExpectShape(w_v, "w_v", {g.d_model, -1}));
  if (w_v.dim(1) % g.kv_heads != 0) {
    return Invalid("w_v.shape: width not divisible by num_kv_heads");
  }
  g.dv = w_v.dim(1) / g.kv_heads;
  return g;
}

// [B, H, S, width]: head h, feature e of (x[b, s] + pos[s]) @ w, column h*width+e.
std::vector<double> ProjectHeads(const Tensor& x, const std::vector<double>& pos, const Tensor& w,
                                 int64_t heads, int64_t width) {
  const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2), cols = w.dim(1);
  std::vector<double> result(static_cast<size_t>(batch * heads * seq * width));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      for (int64_t col = 0; col < cols; ++col) {
        double sum = 0;
        for (int64_t c = 0; c < d_model; ++c) {
          const double xc = static_cast<double>(x.data()[(b * seq + s) * d_model + c]) +
                            pos[static_cast<size_t>(s * d_model + c)];
          sum += xc * static_cast<double>(w.data()[c * cols + col]);
        }
        const int64_t h = col / width, e = col % width;
        result[static_cast<size_t>(((b * heads + h) * seq + s) * width + e)] = sum;
      }
    }
  }
  return result;
}

// Rows first .. first+count-1 of the position table `row_of`, flattened.
std::vector<double> Rows(const std::function<std::vector<double>(int64_t)>& row_of, int64_t first,
                         int64_t count) {
  std::vector<double> rows;
  for (int64_t s = 0; s < count; ++s) {
    const std::vector<double> row = row_of(first + s);
    rows.insert(rows.end(), row.begin(), row.end());
  }
  return rows;
}

absl::StatusOr<Problem> ProjectedProblem(const kernels::AttendArgs& args, const Projection& g,
                                         const std::vector<double>& pos_q,
                                         const std::vector<double>& pos_k, int64_t offset) {
  Problem p;
  p.batch = g.batch;
  p.heads = g.heads;
  p.kv_heads = g.kv_heads;
  p.sq = g.sq;
  p.sk = g.sk;
  p.d = g.d;
  p.dv = g.dv;
  p.offset = offset;
  p.causal = args.causal;
  auto scale = ResolveScaleParam(args.scale, g.d);
  if (!scale.ok()) return scale.status();
  p.scale = *scale;
  REF_RETURN_IF_ERROR(ResolveVariants(args, &p));
  const Tensor& x_kv = args.inputs.at("x_kv");
  p.q = ProjectHeads(args.inputs.at("x_q"), pos_q, args.inputs.at("w_q"), g.heads, g.d);
  p.k = ProjectHeads(x_kv, pos_k, args.inputs.at("w_k"), g.kv_heads, g.d);
  p.v = ProjectHeads(x_kv, pos_k, args.inputs.at("w_v"), g.kv_heads, g.dv);
  return p;
}

double PlainScore(const Problem& p, double dot) { return p.scale * dot; }

// ---------------------------------------------------------------------------
// Attend, one function per method.

absl::StatusOr<RefOutputs> AttendNone(const kernels::AttendArgs& args) {
  auto p = QkvProblem(args);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  return RunAttention(
      pr, [&](int64_t, int64_t, int64_t, int64_t, double dot) { return PlainScore(pr, dot); },
      nullptr);
}

absl::StatusOr<RefOutputs> AttendSinusoidal(const kernels::AttendArgs& args) {
  auto base = ResolvePositiveParam(args.params.base, 10000.0, "base");
  if (!base.ok()) return base.status();
  auto g = CheckProjection(args);
  if (!g.ok()) return g.status();
  auto scale = ResolveScaleParam(args.scale, g->d);
  if (!scale.ok()) return scale.status();
  auto offset = ResolveOffset(args.query_offset, g->sq, g->sk);
  if (!offset.ok()) return offset.status();
  const auto row_of = [&](int64_t pos) {
    return ReferenceSinusoid(static_cast<double>(pos), g->d_model, *base);
  };
  auto p =
      ProjectedProblem(args, *g, Rows(row_of, *offset, g->sq), Rows(row_of, 0, g->sk), *offset);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  return RunAttention(
      pr, [&](int64_t, int64_t, int64_t, int64_t, double dot) { return PlainScore(pr, dot); },
      nullptr);
}

absl::StatusOr<RefOutputs> AttendLearned(const kernels::AttendArgs& args) {
  auto g = CheckProjection(args);
  if (!g.ok()) return g.status();
  auto scale = ResolveScaleParam(args.scale, g->d);
  if (!scale.ok()) return scale.status();
  auto offset = ResolveOffset(args.query_offset, g->sq, g->sk);
  if (!offset.ok()) return offset.status();
  const Tensor& table = args.inputs.at("table");
  REF_RETURN_IF_ERROR(ExpectShape(table, "table", {-1, g->d_model}));
  // Positions against the table last: INVALID_ARGUMENT wins (api.md).
  const int64_t max_len = table.dim(0);
  if (*offset + g->sq > max_len) {
    return absl::OutOfRangeError("query_offset: query positions beyond the learned table");
  }
  if (g->sk > max_len) return absl::OutOfRangeError("x_kv: key positions beyond the learned table");
  const auto row_of = [&](int64_t pos) {
    const float* row = table.data() + pos * g->d_model;
    return std::vector<double>(row, row + g->d_model);
  };
  auto p =
      ProjectedProblem(args, *g, Rows(row_of, *offset, g->sq), Rows(row_of, 0, g->sk), *offset);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  return RunAttention(
      pr, [&](int64_t, int64_t, int64_t, int64_t, double dot) { return PlainScore(pr, dot); },
      nullptr);
}

absl::StatusOr<RefOutputs> AttendRope(const kernels::AttendArgs& args) {
  auto p = QkvProblem(args);
  if (!p.ok()) return p.status();
  auto setup = MakeRopeSetup(args.params, p->d, std::max(p->sk, p->offset + p->sq));
  if (!setup.ok()) return setup.status();
  Problem& pr = *p;
  for (int64_t bh = 0; bh < pr.batch * pr.heads; ++bh) {
    for (int64_t i = 0; i < pr.sq; ++i) {
      Rotate(*setup, static_cast<double>(pr.offset + i), pr.q.data() + (bh * pr.sq + i) * pr.d);
    }
  }
  for (int64_t bh = 0; bh < pr.batch * pr.kv_heads; ++bh) {
    for (int64_t j = 0; j < pr.sk; ++j) {
      Rotate(*setup, static_cast<double>(j), pr.k.data() + (bh * pr.sk + j) * pr.d);
    }
  }
  return RunAttention(
      pr, [&](int64_t, int64_t, int64_t, int64_t, double dot) { return PlainScore(pr, dot); },
      nullptr);
}

absl::StatusOr<int64_t> ResolveDRel(int64_t d_rel) {
  if (d_rel < 2 || d_rel % 2 != 0) return Invalid("d_rel: must be even and >= 2");
  return d_rel;
}

// rel_h(r)[e] = sum_c R(r)[c] * w_r[h, c, e].
std::vector<double> RelativeProjection(const Tensor& w_r, int64_t h, double r, double base) {
  const int64_t d_rel = w_r.dim(1), d = w_r.dim(2);
  const std::vector<double> sinusoid = ReferenceRelativeSinusoid(r, d_rel, base);
  std::vector<double> rel(static_cast<size_t>(d), 0.0);
  for (int64_t c = 0; c < d_rel; ++c) {
    for (int64_t e = 0; e < d; ++e) {
      rel[static_cast<size_t>(e)] += sinusoid[static_cast<size_t>(c)] *
                                     static_cast<double>(w_r.data()[(h * d_rel + c) * d + e]);
    }
  }
  return rel;
}

absl::StatusOr<RefOutputs> AttendTransformerXl(const kernels::AttendArgs& args) {
  auto d_rel = ResolveDRel(args.params.d_rel);
  if (!d_rel.ok()) return d_rel.status();
  auto base = ResolvePositiveParam(args.params.base, 10000.0, "base");
  if (!base.ok()) return base.status();
  auto p = QkvProblem(args);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  const Tensor& u = args.inputs.at("pos_bias_u");
  const Tensor& bias_v = args.inputs.at("pos_bias_v");
  const Tensor& w_r = args.inputs.at("w_r");
  REF_RETURN_IF_ERROR(ExpectShape(u, "pos_bias_u", {pr.heads, pr.d}));
  REF_RETURN_IF_ERROR(ExpectShape(bias_v, "pos_bias_v", {pr.heads, pr.d}));
  REF_RETURN_IF_ERROR(ExpectShape(w_r, "w_r", {pr.heads, *d_rel, pr.d}));
  // rel_h(delta) for every head and every distance delta the call can meet.
  const int64_t min_delta = pr.offset - (pr.sk - 1);
  const int64_t max_delta = pr.offset + pr.sq - 1;
  std::vector<std::vector<std::vector<double>>> rel(static_cast<size_t>(pr.heads));
  for (int64_t h = 0; h < pr.heads; ++h) {
    for (int64_t delta = min_delta; delta <= max_delta; ++delta) {
      rel[h].push_back(RelativeProjection(w_r, h, static_cast<double>(delta), *base));
    }
  }
  return RunAttention(
      pr,
      [&](int64_t b, int64_t h, int64_t i, int64_t j, double) {
        const double* q_row = pr.QRow(b, h, i);
        const double* k_row = pr.KRow(b, h, j);
        const std::vector<double>& r = rel[h][static_cast<size_t>(pr.offset + i - j - min_delta)];
        double content = 0, position = 0;
        for (int64_t e = 0; e < pr.d; ++e) {
          content += (q_row[e] + static_cast<double>(u.data()[h * pr.d + e])) * k_row[e];
          position += (q_row[e] + static_cast<double>(bias_v.data()[h * pr.d + e])) * r[e];
        }
        return pr.scale * (content + position);
      },
      nullptr);
}

// a = clip(k_pos - q_pos, -K, K); row a + K.
int64_t ShawRow(int64_t q_pos, int64_t k_pos, int64_t k) {
  return std::clamp<int64_t>(k_pos - q_pos, -k, k) + k;
}

absl::StatusOr<int64_t> ResolveK(const std::optional<int64_t>& k) {
  if (!k) return Invalid("max_relative_position: required");
  if (*k < 0) return Invalid("max_relative_position: must be >= 0");
  return *k;
}

absl::StatusOr<RefOutputs> AttendShaw(const kernels::AttendArgs& args) {
  auto k = ResolveK(args.params.max_relative_position);
  if (!k.ok()) return k.status();
  auto p = QkvProblem(args);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  const Tensor& rel_k = args.inputs.at("rel_k");
  const Tensor& rel_v = args.inputs.at("rel_v");
  REF_RETURN_IF_ERROR(ExpectShape(rel_k, "rel_k", {2 * *k + 1, pr.d}));
  REF_RETURN_IF_ERROR(ExpectShape(rel_v, "rel_v", {2 * *k + 1, pr.dv}));
  const std::vector<double> rk = ToDouble(rel_k), rv = ToDouble(rel_v);
  return RunAttention(
      pr,
      [&](int64_t b, int64_t h, int64_t i, int64_t j, double dot) {
        const double* rel = rk.data() + ShawRow(pr.offset + i, j, *k) * pr.d;
        return pr.scale * (dot + Dot(pr.QRow(b, h, i), rel, pr.d));
      },
      [&](int64_t i, int64_t j, double prob, double* out) {
        const double* rel = rv.data() + ShawRow(pr.offset + i, j, *k) * pr.dv;
        for (int64_t e = 0; e < pr.dv; ++e) out[e] += prob * rel[e];
      });
}

// The custom slopes [H] when given (attention-variants.md 7), else the
// paper's. Their finiteness is CheckInputSet's.
absl::StatusOr<std::vector<double>> AlibiSlopes(const TensorMap& inputs, int64_t heads) {
  const auto it = inputs.find("slopes");
  if (it == inputs.end()) return ReferenceAlibiSlopes(heads);
  REF_RETURN_IF_ERROR(ExpectShape(it->second, "slopes", {heads}));
  return ToDouble(it->second);
}

absl::StatusOr<RefOutputs> AttendAlibi(const kernels::AttendArgs& args) {
  auto p = QkvProblem(args);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  auto slopes = AlibiSlopes(args.inputs, pr.heads);
  if (!slopes.ok()) return slopes.status();
  return RunAttention(
      pr,
      [&](int64_t, int64_t h, int64_t i, int64_t j, double dot) {
        const double distance = std::abs(static_cast<double>(pr.offset + i - j));
        return pr.scale * dot - (*slopes)[static_cast<size_t>(h)] * distance;
      },
      nullptr);
}

absl::Status CheckDistanceWeights(const TensorMap& inputs, int64_t heads) {
  REF_RETURN_IF_ERROR(ExpectShape(inputs.at("dist_w"), "dist_w", {heads}));
  return ExpectShape(inputs.at("dist_v"), "dist_v", {inputs.at("dist_w").dim(0)});
}

absl::StatusOr<RefOutputs> AttendDaTransformer(const kernels::AttendArgs& args) {
  auto p = QkvProblem(args);
  if (!p.ok()) return p.status();
  const Problem& pr = *p;
  REF_RETURN_IF_ERROR(CheckDistanceWeights(args.inputs, pr.heads));
  const std::vector<double> w = ToDouble(args.inputs.at("dist_w"));
  const std::vector<double> v = ToDouble(args.inputs.at("dist_v"));
  return RunAttention(
      pr,
      [&](int64_t, int64_t h, int64_t i, int64_t j, double dot) {
        const double distance = std::abs(static_cast<double>(pr.offset + i - j));
        const double coeff = ReferenceDaCoefficient(w[h], v[h], distance);
        return std::max(0.0, dot) * coeff * pr.scale;
      },
      nullptr);
}

// ---------------------------------------------------------------------------
// Encode, one function per method (3.2).

RefTensor Make(std::vector<int64_t> shape, std::vector<double> data) {
  return RefTensor{std::move(shape), std::move(data)};
}

absl::StatusOr<RefOutputs> EncodeSinusoidal(const kernels::EncodeArgs& args) {
  auto base = ResolvePositiveParam(args.params.base, 10000.0, "base");
  if (!base.ok()) return base.status();
  const Tensor& x = args.inputs.at("x");
  REF_RETURN_IF_ERROR(ExpectShape(x, "x", {-1, -1, -1}));
  if (args.offset < 0) return Invalid("offset: must be >= 0");
  const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2);
  std::vector<double> table;
  for (int64_t s = 0; s < seq; ++s) {
    const std::vector<double> row =
        ReferenceSinusoid(static_cast<double>(args.offset + s), d_model, *base);
    table.insert(table.end(), row.begin(), row.end());
  }
  std::vector<double> y = ToDouble(x);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t n = 0; n < seq * d_model; ++n) y[b * seq * d_model + n] += table[n];
  }
  RefOutputs outputs;
  outputs["y"] = Make(x.shape(), std::move(y));
  outputs["table"] = Make({seq, d_model}, std::move(table));
  return outputs;
}

absl::StatusOr<RefOutputs> EncodeLearned(const kernels::EncodeArgs& args) {
  const Tensor& x = args.inputs.at("x");
  const Tensor& table = args.inputs.at("table");
  REF_RETURN_IF_ERROR(ExpectShape(x, "x", {-1, -1, -1}));
  const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2);
  REF_RETURN_IF_ERROR(ExpectShape(table, "table", {-1, d_model}));
  // api.md: a negative offset is a position outside the table.
  if (args.offset < 0 || args.offset + seq > table.dim(0)) {
    return absl::OutOfRangeError("offset: positions outside the learned table");
  }
  std::vector<double> y = ToDouble(x);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t n = 0; n < seq * d_model; ++n) {
      y[b * seq * d_model + n] += static_cast<double>(table.data()[args.offset * d_model + n]);
    }
  }
  RefOutputs outputs;
  outputs["y"] = Make(x.shape(), std::move(y));
  return outputs;
}

absl::StatusOr<RefOutputs> EncodeRope(const kernels::EncodeArgs& args) {
  const Tensor& x = args.inputs.at("x");
  REF_RETURN_IF_ERROR(ExpectShape(x, "x", {-1, -1, -1, -1}));
  if (args.offset < 0) return Invalid("offset: must be >= 0");
  auto setup = MakeRopeSetup(args.params, x.dim(3), args.offset + x.dim(2));
  if (!setup.ok()) return setup.status();
  const int64_t rows = x.dim(0) * x.dim(1), seq = x.dim(2), d = x.dim(3);
  std::vector<double> y = ToDouble(x);
  for (int64_t bh = 0; bh < rows; ++bh) {
    for (int64_t s = 0; s < seq; ++s) {
      Rotate(*setup, static_cast<double>(args.offset + s), y.data() + (bh * seq + s) * d);
    }
  }
  RefOutputs outputs;
  outputs["y"] = Make(x.shape(), std::move(y));
  return outputs;
}

absl::StatusOr<RefOutputs> EncodeTransformerXl(const kernels::EncodeArgs& args) {
  auto d_rel = ResolveDRel(args.params.d_rel);
  if (!d_rel.ok()) return d_rel.status();
  auto base = ResolvePositiveParam(args.params.base, 10000.0, "base");
  if (!base.ok()) return base.status();
  const Tensor& distances = args.inputs.at("distances");
  REF_RETURN_IF_ERROR(ExpectShape(distances, "distances", {-1}));
  const auto w_r = args.inputs.find("w_r");
  if (w_r != args.inputs.end()) {
    REF_RETURN_IF_ERROR(ExpectShape(w_r->second, "w_r", {-1, *d_rel, -1}));
  }
  const int64_t count = distances.dim(0);
  RefOutputs outputs;
  RefTensor& table = outputs["rel_table"];
  table.shape = {count, *d_rel};
  for (int64_t n = 0; n < count; ++n) {
    const std::vector<double> row =
        ReferenceRelativeSinusoid(static_cast<double>(distances.data()[n]), *d_rel, *base);
    table.data.insert(table.data.end(), row.begin(), row.end());
  }
  if (w_r != args.inputs.end()) {
    const int64_t heads = w_r->second.dim(0), d = w_r->second.dim(2);
    RefTensor& proj = outputs["rel_proj"];
    proj.shape = {heads, count, d};
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t n = 0; n < count; ++n) {
        const std::vector<double> rel =
            RelativeProjection(w_r->second, h, static_cast<double>(distances.data()[n]), *base);
        proj.data.insert(proj.data.end(), rel.begin(), rel.end());
      }
    }
  }
  return outputs;
}

absl::Status CheckSizes(const kernels::EncodeArgs& args) {
  if (args.sq < 1) return Invalid("sq: must be >= 1");
  if (args.sk < 1) return Invalid("sk: must be >= 1");
  return absl::OkStatus();
}

absl::StatusOr<RefOutputs> EncodeShaw(const kernels::EncodeArgs& args) {
  auto k = ResolveK(args.params.max_relative_position);
  if (!k.ok()) return k.status();
  REF_RETURN_IF_ERROR(CheckSizes(args));
  auto offset = ResolveOffset(args.query_offset, args.sq, args.sk);
  if (!offset.ok()) return offset.status();
  const Tensor& rel_k = args.inputs.at("rel_k");
  REF_RETURN_IF_ERROR(ExpectShape(rel_k, "rel_k", {2 * *k + 1, -1}));
  const int64_t d = rel_k.dim(1);
  RefOutputs outputs;
  RefTensor& index = outputs["rel_index"];
  RefTensor& gathered = outputs["rel_k_gathered"];
  index.shape = {args.sq, args.sk};
  gathered.shape = {args.sq, args.sk, d};
  for (int64_t i = 0; i < args.sq; ++i) {
    for (int64_t j = 0; j < args.sk; ++j) {
      const int64_t row = ShawRow(*offset + i, j, *k);
      index.data.push_back(static_cast<double>(row));
      for (int64_t e = 0; e < d; ++e) {
        gathered.data.push_back(static_cast<double>(rel_k.data()[row * d + e]));
      }
    }
  }
  return outputs;
}

absl::StatusOr<RefOutputs> EncodeAlibi(const kernels::EncodeArgs& args) {
  if (args.num_heads < 1) return Invalid("num_heads: must be >= 1");
  REF_RETURN_IF_ERROR(CheckSizes(args));
  auto offset = ResolveOffset(args.query_offset, args.sq, args.sk);
  if (!offset.ok()) return offset.status();
  auto custom = AlibiSlopes(args.inputs, args.num_heads);
  if (!custom.ok()) return custom.status();
  const std::vector<double>& slopes = *custom;
  RefOutputs outputs;
  outputs["slopes"] = Make({args.num_heads}, slopes);
  RefTensor& bias = outputs["bias"];
  bias.shape = {args.num_heads, args.sq, args.sk};
  for (int64_t h = 0; h < args.num_heads; ++h) {
    for (int64_t i = 0; i < args.sq; ++i) {
      for (int64_t j = 0; j < args.sk; ++j) {
        bias.data.push_back(-slopes[static_cast<size_t>(h)] *
                            std::abs(static_cast<double>(*offset + i - j)));
      }
    }
  }
  return outputs;
}

absl::StatusOr<RefOutputs> EncodeDaTransformer(const kernels::EncodeArgs& args) {
  REF_RETURN_IF_ERROR(ExpectShape(args.inputs.at("dist_w"), "dist_w", {-1}));
  REF_RETURN_IF_ERROR(CheckDistanceWeights(args.inputs, args.inputs.at("dist_w").dim(0)));
  REF_RETURN_IF_ERROR(CheckSizes(args));
  auto offset = ResolveOffset(args.query_offset, args.sq, args.sk);
  if (!offset.ok()) return offset.status();
  const std::vector<double> w = ToDouble(args.inputs.at("dist_w"));
  const std::vector<double> v = ToDouble(args.inputs.at("dist_v"));
  const int64_t heads = static_cast<int64_t>(w.size());
  RefOutputs outputs;
  RefTensor& coeff = outputs["coeff"];
  coeff.shape = {heads, args.sq, args.sk};
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < args.sq; ++i) {
      for (int64_t j = 0; j < args.sk; ++j) {
        coeff.data.push_back(
            ReferenceDaCoefficient(w[h], v[h], std::abs(static_cast<double>(*offset + i - j))));
      }
    }
  }
  return outputs;
}

// The tensors each op takes (positional-methods.md 3.2).
struct InputNames {
  std::vector<std::string> required, optional;
};

InputNames AttendInputs(MethodKind kind) {
  const std::vector<std::string> qkv = {"q", "k", "v"};
  const std::vector<std::string> projected = {"x_q", "x_kv", "w_q", "w_k", "w_v"};
  auto with = [](std::vector<std::string> names, std::vector<std::string> more) {
    names.insert(names.end(), more.begin(), more.end());
    return InputNames{std::move(names), {}};
  };
  switch (kind) {
    case MethodKind::kNone:
    case MethodKind::kRope:
      return with(qkv, {});
    case MethodKind::kAlibi:
      return InputNames{qkv, {"slopes"}};
    case MethodKind::kSinusoidal:
      return with(projected, {});
    case MethodKind::kLearned:
      return with(projected, {"table"});
    case MethodKind::kTransformerXL:
      return with(qkv, {"pos_bias_u", "pos_bias_v", "w_r"});
    case MethodKind::kShaw:
      return with(qkv, {"rel_k", "rel_v"});
    case MethodKind::kDaTransformer:
      return with(qkv, {"dist_w", "dist_v"});
  }
  return {};
}

InputNames EncodeInputs(MethodKind kind) {
  switch (kind) {
    case MethodKind::kNone:
      return {};
    case MethodKind::kSinusoidal:
    case MethodKind::kRope:
      return {{"x"}, {}};
    case MethodKind::kLearned:
      return {{"x", "table"}, {}};
    case MethodKind::kTransformerXL:
      return {{"distances"}, {"w_r"}};
    case MethodKind::kShaw:
      return {{"rel_k"}, {}};
    case MethodKind::kAlibi:
      return {{}, {"slopes"}};
    case MethodKind::kDaTransformer:
      return {{"dist_w", "dist_v"}, {}};
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------
// Tables.

std::vector<double> ReferenceSinusoid(double position, int64_t d_model, double base) {
  std::vector<double> row(static_cast<size_t>(d_model));
  for (int64_t c = 0; c < d_model; ++c) {
    const int64_t n = c / 2;
    const double angle =
        position / std::pow(base, static_cast<double>(2 * n) / static_cast<double>(d_model));
    row[static_cast<size_t>(c)] = c % 2 == 0 ? std::sin(angle) : std::cos(angle);
  }
  return row;
}

std::vector<double> ReferenceRelativeSinusoid(double r, int64_t d_rel, double base) {
  const int64_t half = d_rel / 2;
  std::vector<double> sines, cosines;
  for (int64_t n = 0; n < half; ++n) {
    const double f = std::pow(base, -2.0 * static_cast<double>(n) / static_cast<double>(d_rel));
    sines.push_back(std::sin(r * f));
    cosines.push_back(std::cos(r * f));
  }
  sines.insert(sines.end(), cosines.begin(), cosines.end());
  return sines;
}

std::vector<double> ReferenceAlibiSlopes(int64_t heads) {
  // get_slopes_power_of_2(n): start = 2^(-2^-(log2(n) - 3)) = 2^(-8/n), then
  // start * ratio^i with ratio = start.
  const auto power_of_two_slopes = [](int64_t n) {
    const double start = std::pow(2.0, -8.0 / static_cast<double>(n));
    std::vector<double> slopes;
    double slope = start;
    for (int64_t i = 0; i < n; ++i, slope *= start) slopes.push_back(slope);
    return slopes;
  };
  int64_t closest = 1;
  while (closest * 2 <= heads) closest *= 2;
  std::vector<double> slopes = power_of_two_slopes(closest);
  if (closest == heads) return slopes;
  // get_slopes(2 * closest)[0::2][: n - closest].
  const std::vector<double> doubled = power_of_two_slopes(2 * closest);
  for (int64_t i = 0; i < heads - closest; ++i)
    slopes.push_back(doubled[static_cast<size_t>(2 * i)]);
  return slopes;
}

double ReferenceDaCoefficient(double w, double v, double distance) {
  // log Rhat = log(1 + e^v) - log(1 + e^(v - x)), each log(1 + e^t) as
  // max(t, 0) + log1p(e^-|t|), which never overflows.
  const auto log1p_exp = [](double t) {
    return std::max(t, 0.0) + std::log1p(std::exp(-std::abs(t)));
  };
  const double x = w * distance;
  return std::exp(log1p_exp(v) - log1p_exp(v - x));
}

absl::StatusOr<RefOutputs> ReferenceAttend(const kernels::AttendArgs& args) {
  const InputNames names = AttendInputs(args.method);
  REF_RETURN_IF_ERROR(CheckInputSet(args.inputs, names.required, names.optional,
                                    absl::StrCat(Name(args.method), " attend")));
  switch (args.method) {
    case MethodKind::kNone:
      return AttendNone(args);
    case MethodKind::kSinusoidal:
      return AttendSinusoidal(args);
    case MethodKind::kLearned:
      return AttendLearned(args);
    case MethodKind::kRope:
      return AttendRope(args);
    case MethodKind::kTransformerXL:
      return AttendTransformerXl(args);
    case MethodKind::kShaw:
      return AttendShaw(args);
    case MethodKind::kAlibi:
      return AttendAlibi(args);
    case MethodKind::kDaTransformer:
      return AttendDaTransformer(args);
  }
  return Invalid("method: unknown");
}

absl::StatusOr<RefOutputs> ReferenceEncode(const kernels::EncodeArgs& args) {
  if (args.method == MethodKind::kNone) return Invalid("method: none has no encode form");
  const InputNames names = EncodeInputs(args.method);
  REF_RETURN_IF_ERROR(CheckInputSet(args.inputs, names.required, names.optional,
                                    absl::StrCat(Name(args.method), " encode")));
  switch (args.method) {
    case MethodKind::kNone:
      break;
    case MethodKind::kSinusoidal:
      return EncodeSinusoidal(args);
    case MethodKind::kLearned:
      return EncodeLearned(args);
    case MethodKind::kRope:
      return EncodeRope(args);
    case MethodKind::kTransformerXL:
      return EncodeTransformerXl(args);
    case MethodKind::kShaw:
      return EncodeShaw(args);
    case MethodKind::kAlibi:
      return EncodeAlibi(args);
    case MethodKind::kDaTransformer:
      return EncodeDaTransformer(args);
  }
  return Invalid("method: unknown");
}

// ---------------------------------------------------------------------------
// Decode sessions (decode-sessions.md 1-3).

namespace {

// `a` followed by `b` along `axis` (the other dimensions agree: checked by
// the caller's shape rules).
RefTensor ConcatAlong(const RefTensor& a, const Tensor& b, size_t axis) {
  int64_t outer = 1, inner = 1;
  for (size_t d = 0; d < axis; ++d) outer *= b.shape()[d];
  for (size_t d = axis + 1; d < b.shape().size(); ++d) inner *= b.shape()[d];
  RefTensor out;
  out.shape = b.shape();
  const int64_t a_len = a.shape.empty() ? 0 : a.shape[axis];
  out.shape[axis] += a_len;
  const int64_t a_run = a_len * inner, b_run = b.shape()[axis] * inner;
  for (int64_t o = 0; o < outer; ++o) {
    out.data.insert(out.data.end(), a.data.begin() + o * a_run, a.data.begin() + (o + 1) * a_run);
    for (int64_t n = 0; n < b_run; ++n) out.data.push_back(b.values()[o * b_run + n]);
  }
  return out;
}

RefTensor PrefixAlong(const RefTensor& t, size_t axis, int64_t length) {
  int64_t outer = 1, inner = 1;
  for (size_t d = 0; d < axis; ++d) outer *= t.shape[d];
  for (size_t d = axis + 1; d < t.shape.size(); ++d) inner *= t.shape[d];
  RefTensor out;
  out.shape = t.shape;
  out.shape[axis] = length;
  const int64_t run = t.shape[axis] * inner;
  for (int64_t o = 0; o < outer; ++o) {
    out.data.insert(out.data.end(), t.data.begin() + o * run,
                    t.data.begin() + o * run + length * inner);
  }
  return out;
}

// The history holds float32 inputs widened to double: narrowing is exact.
Tensor ToTensor(const RefTensor& t) {
  return Tensor(t.shape, std::vector<float>(t.data.begin(), t.data.end()));
}

size_t SeqAxis(const std::string& name) { return name == "x" ? 1 : 2; }

}  // namespace

bool ReferenceDecodeSession::Absolute() const {
  return open_.method == MethodKind::kSinusoidal || open_.method == MethodKind::kLearned;
}

absl::StatusOr<ReferenceDecodeSession> ReferenceDecodeSession::Open(RefDecodeOpen open) {
  if (open.batch < 1) return Invalid("batch: must be >= 1");
  if (open.num_heads < 1) return Invalid("num_heads: must be >= 1");
  if (open.num_kv_heads < 0 || (open.num_kv_heads > 0 && open.num_heads % open.num_kv_heads != 0)) {
    return Invalid("num_kv_heads: must be 0 or a divisor of num_heads");
  }
  if (open.num_kv_heads == 0) open.num_kv_heads = open.num_heads;
  if (open.head_dim < 1) return Invalid("head_dim: must be >= 1");
  if (open.value_dim < 0) return Invalid("value_dim: must be >= 0 (0: head_dim)");
  if (open.value_dim == 0) open.value_dim = open.head_dim;
  if (open.max_len < 1) return Invalid("max_len: must be >= 1");
  if (open.window && *open.window < 1) return Invalid("window: must be >= 1");
  if (open.softcap && !(std::isfinite(*open.softcap) && *open.softcap > 0)) {
    return Invalid("softcap: must be finite and > 0");
  }
  if (open.scale && !std::isfinite(*open.scale)) return Invalid("scale: must be finite");
  if (open.method == MethodKind::kRope &&
      open.params.rope_scaling == kernels::RopeScaling::kDynamicNtk) {
    return Invalid("scaling: dynamic_ntk depends on the whole call's length; not in sessions");
  }
  // The open carries the attend inputs other than the per-step ones.
  const InputNames attend = AttendInputs(open.method);
  InputNames names;
  for (const std::string& name : attend.required) {
    if (name != "q" && name != "k" && name != "v" && name != "x_q" && name != "x_kv") {
      names.required.push_back(name);
    }
  }
  names.optional = attend.optional;
  REF_RETURN_IF_ERROR(CheckInputSet(open.tensors, names.required, names.optional,
                                    absl::StrCat(Name(open.method), " decode open")));
  const int64_t h = open.num_heads, h_kv = open.num_kv_heads;
  if (open.method == MethodKind::kSinusoidal || open.method == MethodKind::kLearned) {
    const Tensor& w_q = open.tensors.at("w_q");
    REF_RETURN_IF_ERROR(ExpectShape(w_q, "w_q", {-1, h * open.head_dim}));
    const int64_t d_model = w_q.dim(0);
    REF_RETURN_IF_ERROR(
        ExpectShape(open.tensors.at("w_k"), "w_k", {d_model, h_kv * open.head_dim}));
    REF_RETURN_IF_ERROR(
        ExpectShape(open.tensors.at("w_v"), "w_v", {d_model, h_kv * open.value_dim}));
    if (open.method == MethodKind::kLearned) {
      const Tensor& table = open.tensors.at("table");
      REF_RETURN_IF_ERROR(ExpectShape(table, "table", {-1, d_model}));
      if (table.dim(0) < open.max_len) {
        return absl::OutOfRangeError("max_len: beyond the learned table's rows");
      }
    }
  }
  return ReferenceDecodeSession(std::move(open));
}

absl::StatusOr<RefOutputs> ReferenceDecodeSession::Step(const TensorMap& inputs) {
  const RefDecodeOpen& o = open_;
  int64_t n = 0;
  if (Absolute()) {
    REF_RETURN_IF_ERROR(CheckInputSet(inputs, {"x"}, {}, "a decode step of an absolute method"));
    const int64_t d_model = o.tensors.at("w_q").dim(0);
    REF_RETURN_IF_ERROR(ExpectShape(inputs.at("x"), "x", {o.batch, -1, d_model}));
    n = inputs.at("x").dim(1);
  } else {
    REF_RETURN_IF_ERROR(CheckInputSet(inputs, {"q", "k", "v"}, {}, "a decode step"));
    const Tensor& q = inputs.at("q");
    REF_RETURN_IF_ERROR(ExpectShape(q, "q", {o.batch, o.num_heads, -1, o.head_dim}));
    n = q.dim(2);
    REF_RETURN_IF_ERROR(ExpectShape(inputs.at("k"), "k", {o.batch, o.num_kv_heads, n, o.head_dim}));
    REF_RETURN_IF_ERROR(
        ExpectShape(inputs.at("v"), "v", {o.batch, o.num_kv_heads, n, o.value_dim}));
  }
  if (length_ + n > o.max_len) {
    return absl::OutOfRangeError(absl::StrCat("max_len: ", length_, " cached + ", n,
                                              " new tokens exceed max_len ", o.max_len));
  }
  kernels::AttendArgs args;
  args.method = o.method;
  args.params = o.params;
  args.inputs = o.tensors;
  std::map<std::string, RefTensor> grown;
  for (const auto& [name, tensor] : inputs) {
    if (name == "q") {
      args.inputs["q"] = tensor;
      continue;
    }
    grown[name] = ConcatAlong(history_[name], tensor, SeqAxis(name));
    if (name == "x") {
      args.inputs["x_q"] = tensor;
      args.inputs["x_kv"] = ToTensor(grown[name]);
    } else {
      args.inputs[name] = ToTensor(grown[name]);
    }
  }
  args.num_heads = o.num_heads;
  args.num_kv_heads = o.num_kv_heads;
  args.causal = true;
  args.scale = o.scale;
  args.query_offset = length_;
  args.return_probs = true;
  args.window = o.window;
  args.softcap = o.softcap;
  auto result = ReferenceAttend(args);
  if (!result.ok()) return result.status();
  history_ = std::move(grown);
  length_ += n;
  return result;
}

absl::Status ReferenceDecodeSession::Truncate(int64_t length) {
  if (length < 0 || length > length_) {
    return Invalid("truncate.length: must be in [0, ", std::to_string(length_), "] (cached)");
  }
  for (auto& [name, t] : history_) t = PrefixAlong(t, SeqAxis(name), length);
  length_ = length;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Comparisons.

double MaxAbsError(const kernels::Tensor& got, const RefTensor& ref) {
  if (got.shape() != ref.shape || got.values().size() != ref.data.size()) {
    return std::numeric_limits<double>::infinity();
  }
  double worst = 0;
  for (size_t n = 0; n < ref.data.size(); ++n) {
    const double value = got.values()[n];
    if (!std::isfinite(value)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(value - ref.data[n]));
  }
  return worst;
}

std::string CompareToReference(absl::string_view name, const kernels::Tensor& got,
                               const RefTensor& ref, double rtol, double atol) {
  if (got.shape() != ref.shape || got.values().size() != ref.data.size()) {
    return absl::StrCat(name, ": shape ", ShapeText(got.shape()), ", reference ",
                        ShapeText(ref.shape));
  }
  std::ostringstream report;
  int64_t bad = 0;
  for (size_t n = 0; n < ref.data.size(); ++n) {
    const double value = got.values()[n];
    const double error = std::abs(value - ref.data[n]);
    const double allowed = atol + rtol * std::abs(ref.data[n]);
    if (!std::isfinite(value) || !(error <= allowed)) {
      if (bad < 5) {
        report << "\n  " << name << "[" << n << "]: got " << value << ", reference " << ref.data[n]
               << " (error " << error << " > " << allowed << ")";
      }
      ++bad;
    }
  }
  if (bad == 0) return "";
  return absl::StrCat(name, ": ", bad, " of ", ref.data.size(), " values out of tolerance",
                      report.str());
}

absl::Status CheckErrorRule(const kernels::Tensor& fast, const kernels::Tensor& plain,
                            const RefTensor& ref, double factor, double slack) {
  const double fast_error = MaxAbsError(fast, ref);
  const double plain_error = MaxAbsError(plain, ref);
  if (fast_error <= factor * plain_error + slack) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("max |fast - ref| = ", fast_error, " > ", factor,
                                          " * max |plain - ref| (", plain_error, ") + ", slack));
}

#undef REF_RETURN_IF_ERROR

}  // namespace attnserve::testing
