#include "tests/testing/golden_proto.h"

#include <cstring>
#include <functional>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnserve::testing {
namespace {

void FillTensor(const GoldenTensor& t, WireEncoding encoding, v1::Tensor* out) {
  for (int64_t d : t.shape) out->add_shape(d);
  const std::vector<float> values = t.AsFloats();
  if (encoding == WireEncoding::kData) {
    for (float x : values) out->add_data(x);
  } else {
    std::string bytes(values.size() * sizeof(float), '\0');
    std::memcpy(bytes.data(), values.data(), bytes.size());  // Little-endian host.
    out->set_raw_data(std::move(bytes));
  }
}

// The method message for the case, with its parameters and tensors; the
// request-level tensors are left to the caller.
absl::Status FillMethod(const GoldenCase& c, WireEncoding encoding, v1::PositionalMethod* m,
                        std::set<std::string>* used) {
  // Sets a method tensor only when the case has it (mutable_* marks presence).
  auto tensor = [&](const std::string& name, const std::function<v1::Tensor*()>& field) {
    auto it = c.inputs.find(name);
    if (it == c.inputs.end()) return;
    FillTensor(it->second, encoding, field());
    used->insert(name);
  };
  if (c.method == "none") {
    m->mutable_none();
  } else if (c.method == "sinusoidal") {
    auto* s = m->mutable_sinusoidal();
    if (auto base = c.Double("base")) s->set_base(*base);
  } else if (c.method == "learned") {
    auto* l = m->mutable_learned();
    tensor("table", [&] { return l->mutable_table(); });
  } else if (c.method == "rope") {
    auto* r = m->mutable_rope();
    if (auto layout = c.String("layout")) {
      if (*layout == "interleaved") {
        r->set_layout(v1::ROPE_LAYOUT_INTERLEAVED);
      } else if (*layout == "half") {
        r->set_layout(v1::ROPE_LAYOUT_HALF);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("layout ", *layout));
      }
    }
    if (auto scaling = c.String("scaling")) {
      if (*scaling == "none") {
        r->set_scaling(v1::ROPE_SCALING_NONE);
      } else if (*scaling == "linear") {
        r->set_scaling(v1::ROPE_SCALING_LINEAR);
      } else if (*scaling == "ntk") {
        r->set_scaling(v1::ROPE_SCALING_NTK);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("scaling ", *scaling));
      }
    }
    if (auto base = c.Double("base")) r->set_base(*base);
    if (auto factor = c.Double("scaling_factor")) r->set_scaling_factor(*factor);
    if (auto dim = c.Int("rotary_dim")) r->set_rotary_dim(static_cast<int32_t>(*dim));
  } else if (c.method == "transformer_xl") {
    auto* t = m->mutable_transformer_xl();
    if (auto d_rel = c.Int("d_rel")) t->set_d_rel(static_cast<int32_t>(*d_rel));
    if (auto base = c.Double("base")) t->set_base(*base);
    tensor("pos_bias_u", [&] { return t->mutable_pos_bias_u(); });
    tensor("pos_bias_v", [&] { return t->mutable_pos_bias_v(); });
    tensor("w_r", [&] { return t->mutable_w_r(); });
  } else if (c.method == "shaw") {
    auto* s = m->mutable_shaw();
    if (auto k = c.Int("max_relative_position")) {
      s->set_max_relative_position(static_cast<int32_t>(*k));
    }
    tensor("rel_k", [&] { return s->mutable_rel_k(); });
    tensor("rel_v", [&] { return s->mutable_rel_v(); });
  } else if (c.method == "alibi") {
    m->mutable_alibi();
  } else if (c.method == "da_transformer") {
    auto* d = m->mutable_da_transformer();
    tensor("dist_w", [&] { return d->mutable_dist_w(); });
    tensor("dist_v", [&] { return d->mutable_dist_v(); });
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown method ", c.method));
  }
  return absl::OkStatus();
}

v1::Tensor* RequestTensor(v1::AttendRequest* r, const std::string& name) {
  if (name == "q") return r->mutable_q();
  if (name == "k") return r->mutable_k();
  if (name == "v") return r->mutable_v();
  if (name == "x_q") return r->mutable_x_q();
  if (name == "x_kv") return r->mutable_x_kv();
  if (name == "w_q") return r->mutable_w_q();
  if (name == "w_k") return r->mutable_w_k();
  if (name == "w_v") return r->mutable_w_v();
  return nullptr;
}

v1::Tensor* RequestTensor(v1::EncodeRequest* r, const std::string& name) {
  if (name == "x") return r->mutable_x();
  if (name == "distances") return r->mutable_distances();
  return nullptr;
}

template <typename Request>
absl::Status FillInputs(const GoldenCase& c, WireEncoding encoding, Request* request) {
  std::set<std::string> used;
  if (absl::Status s = FillMethod(c, encoding, request->mutable_method(), &used); !s.ok()) {
    return s;
  }
  for (const auto& [name, tensor] : c.inputs) {
    if (used.count(name) > 0) continue;
    v1::Tensor* field = RequestTensor(request, name);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("input ", name, " has no request field"));
    }
    FillTensor(tensor, encoding, field);
  }
  return absl::OkStatus();
}

std::string CheckTensor(const GoldenCase& c, const std::string& name, const v1::Tensor& got,
                        WireEncoding encoding) {
  std::vector<float> values;
  if (encoding == WireEncoding::kData) {
    if (!got.raw_data().empty()) return absl::StrCat(name, ": raw_data set, expected data");
    values.assign(got.data().begin(), got.data().end());
  } else {
    if (got.data_size() > 0) return absl::StrCat(name, ": data set, expected raw_data");
    if (got.raw_data().size() % sizeof(float) != 0) {
      return absl::StrCat(name, ": raw_data of ", got.raw_data().size(), " bytes");
    }
    values.resize(got.raw_data().size() / sizeof(float));
    std::memcpy(values.data(), got.raw_data().data(), got.raw_data().size());
  }
  const std::vector<int64_t> shape(got.shape().begin(), got.shape().end());
  return CompareTensor(name, c.expected.at(name), shape, values, c.rtol, c.atol);
}

}  // namespace

absl::StatusOr<v1::AttendRequest> ToAttendRequest(const GoldenCase& c, WireEncoding encoding) {
  v1::AttendRequest request;
  if (absl::Status s = FillInputs(c, encoding, &request); !s.ok()) return s;
  if (auto heads = c.Int("num_heads")) request.set_num_heads(static_cast<int32_t>(*heads));
  request.set_causal(c.Bool("causal").value_or(false));
  if (auto scale = c.Double("scale")) request.set_scale(*scale);
  if (auto offset = c.Int("query_offset")) request.set_query_offset(*offset);
  request.set_return_probs(c.expected.count("probs") > 0);
  request.set_raw_output(encoding == WireEncoding::kRawData);
  return request;
}

absl::StatusOr<v1::EncodeRequest> ToEncodeRequest(const GoldenCase& c, WireEncoding encoding) {
  v1::EncodeRequest request;
  if (absl::Status s = FillInputs(c, encoding, &request); !s.ok()) return s;
  if (auto offset = c.Int("offset")) request.set_offset(*offset);
  if (auto sq = c.Int("sq")) request.set_sq(*sq);
  if (auto sk = c.Int("sk")) request.set_sk(*sk);
  if (auto offset = c.Int("query_offset")) request.set_query_offset(*offset);
  if (auto heads = c.Int("num_heads")) request.set_num_heads(static_cast<int32_t>(*heads));
  request.set_raw_output(encoding == WireEncoding::kRawData);
  return request;
}

std::string CheckAttendResponse(const GoldenCase& c, const v1::AttendResponse& response,
                                WireEncoding encoding) {
  std::string failures;
  for (const auto& [name, expected] : c.expected) {
    const v1::Tensor* got = name == "out" ? &response.out()
                            : name == "probs" ? &response.probs()
                                              : nullptr;
    if (got == nullptr) {
      absl::StrAppend(&failures, name, ": not an AttendResponse field\n");
      continue;
    }
    const std::string diff = CheckTensor(c, name, *got, encoding);
    if (!diff.empty()) absl::StrAppend(&failures, diff, "\n");
  }
  if (c.expected.count("probs") == 0 && response.has_probs()) {
    absl::StrAppend(&failures, "probs: returned though not requested\n");
  }
  return failures;
}

std::string CheckEncodeResponse(const GoldenCase& c, const v1::EncodeResponse& response,
                                WireEncoding encoding) {
  std::string failures;
  for (const auto& [name, expected] : c.expected) {
    auto it = response.outputs().find(name);
    if (it == response.outputs().end()) {
      absl::StrAppend(&failures, name, ": missing from outputs\n");
      continue;
    }
    const std::string diff = CheckTensor(c, name, it->second, encoding);
    if (!diff.empty()) absl::StrAppend(&failures, diff, "\n");
  }
  for (const auto& [name, tensor] : response.outputs()) {
    if (c.expected.count(name) == 0) absl::StrAppend(&failures, name, ": not expected\n");
  }
  return failures;
}

}  // namespace attnserve::testing
