#include "tests/testing/naive_float32.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;

// q, k, v per head in float, with the call's geometry.
struct Heads {
  int64_t batch = 0, heads = 0, kv_heads = 0, sq = 0, sk = 0, d = 0, dv = 0;
  int64_t offset = 0;
  bool causal = false;
  float scale = 1;
  // attention-variants.md 2, 3, 5 (empty / unset: none).
  std::vector<int64_t> kv_lengths;
  std::optional<int64_t> window;
  std::optional<float> softcap;
  std::vector<float> q, k, v;  // [B,H,Sq,D], [B,H_kv,Sk,D], [B,H_kv,Sk,Dv]

  float* QRow(int64_t b, int64_t h, int64_t i) { return q.data() + ((b * heads + h) * sq + i) * d; }
  const float* QRow(int64_t b, int64_t h, int64_t i) const {
    return q.data() + ((b * heads + h) * sq + i) * d;
  }
  // Key/value head g of batch b (g < kv_heads); query head h reads
  // g = h / (H / H_kv).
  float* KvKeyRow(int64_t b, int64_t g, int64_t j) {
    return k.data() + ((b * kv_heads + g) * sk + j) * d;
  }
  const float* KRow(int64_t b, int64_t h, int64_t j) const {
    return k.data() + ((b * kv_heads + h / (heads / kv_heads)) * sk + j) * d;
  }
  const float* VRow(int64_t b, int64_t h, int64_t j) const {
    return v.data() + ((b * kv_heads + h / (heads / kv_heads)) * sk + j) * dv;
  }
  bool Visible(int64_t b, int64_t i, int64_t j) const {
    const int64_t pos = offset + i;
    if (causal && j > pos) return false;
    if (!kv_lengths.empty() && j >= kv_lengths[static_cast<size_t>(b)]) return false;
    if (window && (causal ? !(pos - *window < j) : !(std::abs(pos - j) < *window))) return false;
    return true;
  }
  // |q_pos(i) - k_pos(j)|, exact in int64, then rounded to float.
  float Distance(int64_t i, int64_t j) const {
    return static_cast<float>(std::abs(offset + i - j));
  }
};

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0;
  for (int64_t e = 0; e < n; ++e) sum += a[e] * b[e];
  return sum;
}

std::vector<float> ToFloat(const std::vector<double>& values) {
  return std::vector<float>(values.begin(), values.end());
}

// score(b, h, i, j) from the rows q_i and k_j.
using ScoreFn = std::function<float(int64_t b, int64_t h, int64_t i, int64_t j, const float* q,
                                    const float* k)>;
// The value row that p(i, j) weights: v_j, or Shaw's v_j + rel_v[idx] built
// in `scratch`.
using ValueFn =
    std::function<const float*(int64_t b, int64_t h, int64_t i, int64_t j, float* scratch)>;

// Sections 1.3 - 1.5 in float over the full [Sq, Sk] score matrix of each head.
NaiveOutputs RunAttention(const Heads& p, const ScoreFn& score, const ValueFn& value_of) {
  NaiveOutputs result;
  result.out = Tensor({p.batch, p.heads, p.sq, p.dv});
  result.probs = Tensor({p.batch, p.heads, p.sq, p.sk});
  std::vector<float> s(static_cast<size_t>(p.sq * p.sk));
  std::vector<float> scratch(static_cast<size_t>(p.dv));
  for (int64_t b = 0; b < p.batch; ++b) {
    const auto masked = [&](int64_t i, int64_t j) { return !p.Visible(b, i, j); };
    for (int64_t h = 0; h < p.heads; ++h) {
      for (int64_t i = 0; i < p.sq; ++i) {
        for (int64_t j = 0; j < p.sk; ++j) {
          if (masked(i, j)) continue;
          float& logit = s[i * p.sk + j];
          logit = score(b, h, i, j, p.QRow(b, h, i), p.KRow(b, h, j));
          if (p.softcap) logit = *p.softcap * std::tanh(logit / *p.softcap);  // Gemma 2, in float
        }
      }
      for (int64_t i = 0; i < p.sq; ++i) {
        float* row = s.data() + i * p.sk;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < p.sk; ++j) {
          if (!masked(i, j)) m = std::max(m, row[j]);
        }
        if (m == -std::numeric_limits<float>::infinity()) continue;  // sees no key: zeros
        float sum = 0;
        for (int64_t j = 0; j < p.sk; ++j) {
          if (masked(i, j)) continue;
          row[j] = std::exp(row[j] - m);
          sum += row[j];
        }
        const int64_t r = (b * p.heads + h) * p.sq + i;
        float* prob_row = result.probs.data() + r * p.sk;
        float* out_row = result.out.data() + r * p.dv;
        for (int64_t j = 0; j < p.sk; ++j) {
          if (masked(i, j)) continue;
          prob_row[j] = row[j] / sum;
          const float* v_row = value_of(b, h, i, j, scratch.data());
          for (int64_t e = 0; e < p.dv; ++e) out_row[e] += prob_row[j] * v_row[e];
        }
      }
    }
  }
  return result;
}

const float* PlainValue(const Heads& p, int64_t b, int64_t h, int64_t j) { return p.VRow(b, h, j); }

float ResolveScale(const kernels::AttendArgs& args, int64_t d) {
  return static_cast<float>(args.scale.value_or(1.0 / std::sqrt(static_cast<double>(d))));
}

int64_t ResolveOffset(const kernels::AttendArgs& args, int64_t sq, int64_t sk) {
  return args.query_offset.value_or(sk - sq);
}

void SetVariants(const kernels::AttendArgs& args, Heads* p) {
  p->kv_lengths = args.kv_lengths;
  p->window = args.window;
  if (args.softcap) p->softcap = static_cast<float>(*args.softcap);
}

Heads QkvHeads(const kernels::AttendArgs& args) {
  const Tensor& q = args.inputs.at("q");
  const Tensor& k = args.inputs.at("k");
  const Tensor& v = args.inputs.at("v");
  Heads p;
  p.batch = q.dim(0);
  p.heads = q.dim(1);
  p.sq = q.dim(2);
  p.d = q.dim(3);
  p.kv_heads = k.dim(1);
  p.sk = k.dim(2);
  p.dv = v.dim(3);
  p.offset = ResolveOffset(args, p.sq, p.sk);
  p.causal = args.causal;
  p.scale = ResolveScale(args, p.d);
  SetVariants(args, &p);
  p.q.assign(q.values().begin(), q.values().end());
  p.k.assign(k.values().begin(), k.values().end());
  p.v.assign(v.values().begin(), v.values().end());
  return p;
}

// [B, H, S, width]: head h, feature e of (x[b, s] + pos[s]) @ w, column h*width+e.
std::vector<float> ProjectHeads(const Tensor& x, const std::vector<float>& pos, const Tensor& w,
                                int64_t heads, int64_t width) {
  const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2), cols = w.dim(1);
  std::vector<float> result(static_cast<size_t>(batch * heads * seq * width));
  std::vector<float> row(static_cast<size_t>(d_model));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      for (int64_t c = 0; c < d_model; ++c) {
        row[c] = x.data()[(b * seq + s) * d_model + c] + pos[static_cast<size_t>(s * d_model + c)];
      }
      for (int64_t col = 0; col < cols; ++col) {
        float sum = 0;
        for (int64_t c = 0; c < d_model; ++c) sum += row[c] * w.data()[c * cols + col];
        const int64_t h = col / width, e = col % width;
        result[static_cast<size_t>(((b * heads + h) * seq + s) * width + e)] = sum;
      }
    }
  }
  return result;
}

// The absolute methods (2.2, 2.3): `row_of(position)` is P[position] in float.
Heads ProjectedHeads(const kernels::AttendArgs& args,
                     const std::function<std::vector<float>(int64_t)>& row_of) {
  const Tensor& x_q = args.inputs.at("x_q");
  const Tensor& x_kv = args.inputs.at("x_kv");
  Heads p;
  p.batch = x_q.dim(0);
  p.sq = x_q.dim(1);
  p.sk = x_kv.dim(1);
  p.heads = args.num_heads;
  p.kv_heads = args.num_kv_heads == 0 ? p.heads : args.num_kv_heads;
  p.d = args.inputs.at("w_q").dim(1) / p.heads;
  p.dv = args.inputs.at("w_v").dim(1) / p.kv_heads;
  p.offset = ResolveOffset(args, p.sq, p.sk);
  p.causal = args.causal;
  p.scale = ResolveScale(args, p.d);
  SetVariants(args, &p);
  const auto rows = [&](int64_t first, int64_t count) {
    std::vector<float> table;
    for (int64_t s = 0; s < count; ++s) {
      const std::vector<float> row = row_of(first + s);
      table.insert(table.end(), row.begin(), row.end());
    }
    return table;
  };
  const std::vector<float> pos_q = rows(p.offset, p.sq), pos_k = rows(0, p.sk);
  p.q = ProjectHeads(x_q, pos_q, args.inputs.at("w_q"), p.heads, p.d);
  p.k = ProjectHeads(x_kv, pos_k, args.inputs.at("w_k"), p.kv_heads, p.d);
  p.v = ProjectHeads(x_kv, pos_k, args.inputs.at("w_v"), p.kv_heads, p.dv);
  return p;
}

NaiveOutputs RunPlain(const Heads& p) {
  return RunAttention(
      p,
      [&](int64_t, int64_t, int64_t, int64_t, const float* q, const float* k) {
        return p.scale * Dot(q, k, p.d);
      },
      [&](int64_t b, int64_t h, int64_t, int64_t j, float*) { return PlainValue(p, b, h, j); });
}

// 2.4: rotates row[0 .. r-1] of a row at `position`; cos and sin of the
// double angle (times YaRN's attention_factor), rounded to float, then the
// rotation in float.
struct Rope {
  bool half = false;
  double position_divisor = 1, magnitude = 1;
  int64_t r = 0;
  std::vector<double> frequency;  // Per pair: the angle is position' * frequency.

  void Rotate(double position, float* row) const {
    const int64_t pairs = r / 2;
    for (int64_t n = 0; n < pairs; ++n) {
      const double phi = position / position_divisor * frequency[static_cast<size_t>(n)];
      const float c = static_cast<float>(std::cos(phi) * magnitude);
      const float s = static_cast<float>(std::sin(phi) * magnitude);
      const int64_t a = half ? n : 2 * n, b = half ? n + pairs : 2 * n + 1;
      const float xa = row[a], xb = row[b];
      row[a] = xa * c - xb * s;
      row[b] = xb * c + xa * s;
    }
  }
};

// attention-variants.md 7, written out as the spec states each scaling
// (the spec's defaults for unset parameters); `length` is dynamic_ntk's L.
Rope MakeRope(const kernels::MethodParams& params, int64_t d, int64_t length) {
  Rope rope;
  rope.half = params.rope_layout == kernels::RopeLayout::kHalf;
  rope.r = params.rotary_dim.value_or(d);
  const double r = static_cast<double>(rope.r);
  double base = params.base.value_or(10000.0);
  const double s = params.scaling_factor.value_or(1.0);
  const double l0 = static_cast<double>(params.original_max_position.value_or(1));
  switch (params.rope_scaling) {
    case kernels::RopeScaling::kNtk:
      base *= std::pow(s, r / (r - 2));
      break;
    case kernels::RopeScaling::kDynamicNtk:
      if (static_cast<double>(length) > l0) {
        base *= std::pow(s * static_cast<double>(length) / l0 - (s - 1), r / (r - 2));
      }
      break;
    case kernels::RopeScaling::kLinear:
      rope.position_divisor = s;
      break;
    case kernels::RopeScaling::kNone:
    case kernels::RopeScaling::kYarn:
    case kernels::RopeScaling::kLlama3:
      break;
  }
  const double pi = 3.14159265358979323846;
  const double low = params.low_freq_factor.value_or(1.0);
  const double high = params.high_freq_factor.value_or(4.0);
  // YaRN: c(n) = r ln(L0 / (2 pi n)) / (2 ln base), lo and hi clamped to dims.
  const auto c = [&](double n) { return r * std::log(l0 / (2 * pi * n)) / (2 * std::log(base)); };
  const double lo = std::max(std::floor(c(params.beta_fast.value_or(32.0))), 0.0);
  double hi = std::min(std::ceil(c(params.beta_slow.value_or(1.0))), r - 1);
  if (lo == hi) hi += 0.001;
  for (int64_t i = 0; i < rope.r / 2; ++i) {
    const double f = std::pow(base, -2.0 * static_cast<double>(i) / r);
    double scaled = f;
    if (params.rope_scaling == kernels::RopeScaling::kLlama3) {
      const double w = 2 * pi / f;
      if (w > l0 / low) {
        scaled = f / s;
      } else if (!(w < l0 / high)) {
        const double a = (l0 / w - low) / (high - low);
        scaled = (1 - a) * f / s + a * f;
      }
    } else if (params.rope_scaling == kernels::RopeScaling::kYarn) {
      const double e = 1 - std::clamp((static_cast<double>(i) - lo) / (hi - lo), 0.0, 1.0);
      scaled = (f / s) * (1 - e) + f * e;
    }
    rope.frequency.push_back(scaled);
  }
  if (params.rope_scaling == kernels::RopeScaling::kYarn) {
    rope.magnitude = params.attention_factor.value_or(0.1 * std::log(s) + 1);
  }
  return rope;
}

NaiveOutputs AttendRope(const kernels::AttendArgs& args) {
  Heads p = QkvHeads(args);
  const Rope rope = MakeRope(args.params, p.d, std::max(p.sk, p.offset + p.sq));
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      for (int64_t i = 0; i < p.sq; ++i) {
        rope.Rotate(static_cast<double>(p.offset + i), p.QRow(b, h, i));
      }
    }
    for (int64_t g = 0; g < p.kv_heads; ++g) {
      for (int64_t j = 0; j < p.sk; ++j) rope.Rotate(static_cast<double>(j), p.KvKeyRow(b, g, j));
    }
  }
  return RunPlain(p);
}

NaiveOutputs AttendTransformerXl(const kernels::AttendArgs& args) {
  const Heads p = QkvHeads(args);
  const int64_t d_rel = args.params.d_rel;
  const double base = args.params.base.value_or(10000.0);
  const Tensor& u = args.inputs.at("pos_bias_u");
  const Tensor& bias_v = args.inputs.at("pos_bias_v");
  const Tensor& w_r = args.inputs.at("w_r");
  // rel_h(delta) = R(delta) @ w_r[h] in float, for every delta of the call.
  const int64_t min_delta = p.offset - (p.sk - 1), max_delta = p.offset + p.sq - 1;
  const int64_t deltas = max_delta - min_delta + 1;
  std::vector<float> rel(static_cast<size_t>(p.heads * deltas * p.d), 0.0f);
  for (int64_t n = 0; n < deltas; ++n) {
    const std::vector<float> sinusoid =
        ToFloat(ReferenceRelativeSinusoid(static_cast<double>(min_delta + n), d_rel, base));
    for (int64_t h = 0; h < p.heads; ++h) {
      float* row = rel.data() + (h * deltas + n) * p.d;
      for (int64_t e = 0; e < p.d; ++e) {
        float sum = 0;
        for (int64_t c = 0; c < d_rel; ++c)
          sum += sinusoid[c] * w_r.data()[(h * d_rel + c) * p.d + e];
        row[e] = sum;
      }
    }
  }
  std::vector<float> q_u(static_cast<size_t>(p.d)), q_v(static_cast<size_t>(p.d));
  return RunAttention(
      p,
      [&](int64_t, int64_t h, int64_t i, int64_t j, const float* q, const float* k) {
        const float* r = rel.data() + (h * deltas + (p.offset + i - j - min_delta)) * p.d;
        for (int64_t e = 0; e < p.d; ++e) {
          q_u[e] = q[e] + u.data()[h * p.d + e];
          q_v[e] = q[e] + bias_v.data()[h * p.d + e];
        }
        return p.scale * (Dot(q_u.data(), k, p.d) + Dot(q_v.data(), r, p.d));
      },
      [&](int64_t b, int64_t h, int64_t, int64_t j, float*) { return PlainValue(p, b, h, j); });
}

NaiveOutputs AttendShaw(const kernels::AttendArgs& args) {
  const Heads p = QkvHeads(args);
  const int64_t max_k = args.params.max_relative_position.value_or(0);
  const float* rel_k = args.inputs.at("rel_k").data();
  const float* rel_v = args.inputs.at("rel_v").data();
  const auto index = [&](int64_t i, int64_t j) {
    return std::clamp<int64_t>(j - (p.offset + i), -max_k, max_k) + max_k;
  };
  std::vector<float> key(static_cast<size_t>(p.d));
  return RunAttention(
      p,
      [&](int64_t, int64_t, int64_t i, int64_t j, const float* q, const float* k) {
        const float* rel = rel_k + index(i, j) * p.d;
        for (int64_t e = 0; e < p.d; ++e) key[e] = k[e] + rel[e];
        return p.scale * Dot(q, key.data(), p.d);
      },
      [&](int64_t b, int64_t h, int64_t i, int64_t j, float* scratch) -> const float* {
        const float* v = p.VRow(b, h, j);
        const float* rel = rel_v + index(i, j) * p.dv;
        for (int64_t e = 0; e < p.dv; ++e) scratch[e] = v[e] + rel[e];
        return scratch;
      });
}

NaiveOutputs AttendAlibi(const kernels::AttendArgs& args) {
  const Heads p = QkvHeads(args);
  // attention-variants.md 7: the input slopes when sent, else get_slopes.
  const auto sent = args.inputs.find("slopes");
  const std::vector<float> slopes =
      sent != args.inputs.end()
          ? std::vector<float>(sent->second.values().begin(), sent->second.values().end())
          : ToFloat(ReferenceAlibiSlopes(p.heads));
  return RunAttention(
      p,
      [&](int64_t, int64_t h, int64_t i, int64_t j, const float* q, const float* k) {
        const float bias = -slopes[h] * p.Distance(i, j);
        return p.scale * Dot(q, k, p.d) + bias;
      },
      [&](int64_t b, int64_t h, int64_t, int64_t j, float*) { return PlainValue(p, b, h, j); });
}

float Sigmoid(float t) {
  if (t >= 0) return 1.0f / (1.0f + std::exp(-t));
  const float e = std::exp(t);
  return e / (1.0f + e);
}

NaiveOutputs AttendDaTransformer(const kernels::AttendArgs& args) {
  const Heads p = QkvHeads(args);
  const float* w = args.inputs.at("dist_w").data();
  const float* v = args.inputs.at("dist_v").data();
  return RunAttention(
      p,
      [&](int64_t, int64_t h, int64_t i, int64_t j, const float* q, const float* k) {
        // Rhat = (1 + exp(v)) / (1 + exp(v - x)), as (1 + exp(v)) * sigmoid(x - v).
        const float x = w[h] * p.Distance(i, j);
        const float coeff = (1.0f + std::exp(v[h])) * Sigmoid(x - v[h]);
        return std::max(0.0f, Dot(q, k, p.d)) * coeff * p.scale;
      },
      [&](int64_t b, int64_t h, int64_t, int64_t j, float*) { return PlainValue(p, b, h, j); });
}

std::vector<const char*> RequiredInputs(MethodKind kind) {
  switch (kind) {
    case MethodKind::kNone:
    case MethodKind::kRope:
    case MethodKind::kAlibi:
      return {"q", "k", "v"};
    case MethodKind::kSinusoidal:
      return {"x_q", "x_kv", "w_q", "w_k", "w_v"};
    case MethodKind::kLearned:
      return {"x_q", "x_kv", "w_q", "w_k", "w_v", "table"};
    case MethodKind::kTransformerXL:
      return {"q", "k", "v", "pos_bias_u", "pos_bias_v", "w_r"};
    case MethodKind::kShaw:
      return {"q", "k", "v", "rel_k", "rel_v"};
    case MethodKind::kDaTransformer:
      return {"q", "k", "v", "dist_w", "dist_v"};
  }
  return {};
}

}  // namespace

absl::StatusOr<NaiveOutputs> NaiveFloat32Attend(const kernels::AttendArgs& args) {
  for (const char* name : RequiredInputs(args.method)) {
    if (args.inputs.find(name) == args.inputs.end()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": required by the naive path"));
    }
  }
  switch (args.method) {
    case MethodKind::kNone:
      return RunPlain(QkvHeads(args));
    case MethodKind::kSinusoidal: {
      const int64_t d_model = args.inputs.at("x_q").dim(2);
      const double base = args.params.base.value_or(10000.0);
      return RunPlain(ProjectedHeads(args, [&](int64_t position) {
        return ToFloat(ReferenceSinusoid(static_cast<double>(position), d_model, base));
      }));
    }
    case MethodKind::kLearned: {
      const Tensor& table = args.inputs.at("table");
      const int64_t d_model = table.dim(1);
      return RunPlain(ProjectedHeads(args, [&](int64_t position) {
        const float* row = table.data() + position * d_model;
        return std::vector<float>(row, row + d_model);
      }));
    }
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
  return absl::InvalidArgumentError("method: unknown");
}

}  // namespace attnserve::testing
