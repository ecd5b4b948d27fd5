#include "tests/kernels/random_args.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

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
  switch (method) {
    case MethodKind::kRope:
      absl::StrAppend(&text, params.rope_layout == kernels::RopeLayout::kHalf ? " half"
                                                                               : " interleaved");
      switch (params.rope_scaling) {
        case kernels::RopeScaling::kNone: break;
        case kernels::RopeScaling::kLinear: absl::StrAppend(&text, " linear"); break;
        case kernels::RopeScaling::kNtk: absl::StrAppend(&text, " ntk"); break;
      }
      if (params.scaling_factor) absl::StrAppend(&text, " factor=", *params.scaling_factor);
      if (params.rotary_dim) absl::StrAppend(&text, " rotary_dim=", *params.rotary_dim);
      break;
    case MethodKind::kTransformerXL: absl::StrAppend(&text, " d_rel=", d_rel); break;
    case MethodKind::kShaw: absl::StrAppend(&text, " K=", max_relative_position); break;
    case MethodKind::kDaTransformer:
      absl::StrAppend(&text, " w_scale=", w_scale, " v_scale=", v_scale, " v_shift=", v_shift);
      break;
    case MethodKind::kLearned: absl::StrAppend(&text, " extra_rows=", extra_table_rows); break;
    case MethodKind::kNone:
    case MethodKind::kSinusoidal:
    case MethodKind::kAlibi: break;
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
  auto& in = args.inputs;
  if (c.method == MethodKind::kSinusoidal || c.method == MethodKind::kLearned) {
    const double w = 1.0 / std::sqrt(static_cast<double>(c.d_model));
    in["x_q"] = RandomTensor({c.batch, c.sq, c.d_model}, rng);
    in["x_kv"] = RandomTensor({c.batch, c.sk, c.d_model}, rng);
    in["w_q"] = RandomTensor({c.d_model, c.heads * c.d}, rng, -w, w);
    in["w_k"] = RandomTensor({c.d_model, c.heads * c.d}, rng, -w, w);
    in["w_v"] = RandomTensor({c.d_model, c.heads * c.dv}, rng, -w, w);
    args.num_heads = c.heads;
    if (c.method == MethodKind::kLearned) {
      const int64_t offset = c.query_offset.value_or(c.sk - c.sq);
      const int64_t max_len = std::max(offset + c.sq, c.sk) + c.extra_table_rows;
      in["table"] = RandomTensor({max_len, c.d_model}, rng);
    }
    return args;
  }
  in["q"] = RandomTensor({c.batch, c.heads, c.sq, c.d}, rng);
  in["k"] = RandomTensor({c.batch, c.heads, c.sk, c.d}, rng);
  in["v"] = RandomTensor({c.batch, c.heads, c.sk, c.dv}, rng);
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
    case MethodKind::kNone:
    case MethodKind::kSinusoidal:
    case MethodKind::kLearned:
    case MethodKind::kRope:
    case MethodKind::kAlibi: break;
  }
  return args;
}

}  // namespace attnserve::testing
