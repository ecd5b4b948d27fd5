#include "tests/testing/golden_proto.h"

#include <cstring>
#include <functional>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnserve::testing {
namespace {

v1::DataType ToDataType(GoldenDtype dtype) {
  switch (dtype) {
    case GoldenDtype::kFloat32:
      return v1::DTYPE_FLOAT32;
    case GoldenDtype::kFloat16:
      return v1::DTYPE_FLOAT16;
    case GoldenDtype::kBfloat16:
      return v1::DTYPE_BFLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
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
      } else if (*scaling == "yarn") {
        r->set_scaling(v1::ROPE_SCALING_YARN);
      } else if (*scaling == "llama3") {
        r->set_scaling(v1::ROPE_SCALING_LLAMA3);
      } else if (*scaling == "dynamic_ntk") {
        r->set_scaling(v1::ROPE_SCALING_DYNAMIC_NTK);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("scaling ", *scaling));
      }
    }
    if (auto base = c.Double("base")) r->set_base(*base);
    if (auto factor = c.Double("scaling_factor")) r->set_scaling_factor(*factor);
    if (auto dim = c.Int("rotary_dim")) r->set_rotary_dim(static_cast<int32_t>(*dim));
    if (auto l0 = c.Int("original_max_position")) r->set_original_max_position(*l0);
    if (auto x = c.Double("beta_fast")) r->set_beta_fast(*x);
    if (auto x = c.Double("beta_slow")) r->set_beta_slow(*x);
    if (auto x = c.Double("attention_factor")) r->set_attention_factor(*x);
    if (auto x = c.Double("low_freq_factor")) r->set_low_freq_factor(*x);
    if (auto x = c.Double("high_freq_factor")) r->set_high_freq_factor(*x);
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
    auto* a = m->mutable_alibi();
    tensor("slopes", [&] { return a->mutable_slopes(); });
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

v1::Tensor* RequestTensor(v1::DecodeOpen* r, const std::string& name) {
  if (name == "w_q") return r->mutable_w_q();
  if (name == "w_k") return r->mutable_w_k();
  if (name == "w_v") return r->mutable_w_v();
  return nullptr;
}

v1::Tensor* RequestTensor(v1::DecodeStep* r, const std::string& name) {
  if (name == "q") return r->mutable_q();
  if (name == "k") return r->mutable_k();
  if (name == "v") return r->mutable_v();
  if (name == "x") return r->mutable_x();
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

std::string CheckTensor(const GoldenCase& c, const std::string& name, const GoldenTensor& expected,
                        const v1::Tensor& got, WireEncoding encoding) {
  std::vector<float> values;
  const GoldenDtype dtype = c.OutputDtype();
  if (!RequestsRawOutput(c, encoding)) {
    if (!got.raw_data().empty()) return absl::StrCat(name, ": raw_data set, expected data");
    values.assign(got.data().begin(), got.data().end());
  } else {
    if (got.data_size() > 0) return absl::StrCat(name, ": data set, expected raw_data");
    const bool dtype_ok = got.dtype() == ToDataType(dtype) ||
                          (dtype == GoldenDtype::kFloat32 && got.dtype() == v1::DTYPE_UNSPECIFIED);
    if (!dtype_ok) {
      return absl::StrCat(name, ": dtype ", v1::DataType_Name(got.dtype()), ", expected ",
                          v1::DataType_Name(ToDataType(dtype)));
    }
    if (got.raw_data().size() % static_cast<size_t>(GoldenDtypeSize(dtype)) != 0) {
      return absl::StrCat(name, ": raw_data of ", got.raw_data().size(), " bytes");
    }
    values = DecodeRaw(got.raw_data(), dtype);
  }
  const std::vector<int64_t> shape(got.shape().begin(), got.shape().end());
  return CompareTensor(name, expected, shape, values, c.rtol, c.atol, dtype);
}

v1::DataType OutputDataType(const GoldenCase& c) {
  const GoldenDtype dtype = c.OutputDtype();
  return dtype == GoldenDtype::kFloat32 ? v1::DTYPE_UNSPECIFIED : ToDataType(dtype);
}

}  // namespace

bool RequestsRawOutput(const GoldenCase& c, WireEncoding encoding) {
  if (c.RawOutputForbidden()) return false;
  return c.OutputDtype() != GoldenDtype::kFloat32 || encoding == WireEncoding::kRawData;
}

void FillTensor(const GoldenTensor& t, WireEncoding encoding, v1::Tensor* out) {
  for (int64_t d : t.shape) out->add_shape(d);
  if (t.dtype != GoldenDtype::kFloat32) out->set_dtype(ToDataType(t.dtype));
  if (t.raw_bytes) {
    out->set_raw_data(*t.raw_bytes);
    return;
  }
  const std::vector<float> values = t.AsFloats();
  if (t.dtype != GoldenDtype::kFloat32 && !t.wire_data) {
    out->set_raw_data(EncodeRaw(values, t.dtype));  // Exact: the values fit the type.
  } else if (encoding == WireEncoding::kData || t.wire_data) {
    for (float x : values) out->add_data(x);
  } else {
    out->set_raw_data(EncodeRaw(values, GoldenDtype::kFloat32));
  }
}

absl::StatusOr<v1::AttendRequest> ToAttendRequest(const GoldenCase& c, WireEncoding encoding) {
  v1::AttendRequest request;
  if (absl::Status s = FillInputs(c, encoding, &request); !s.ok()) return s;
  if (auto heads = c.Int("num_heads")) request.set_num_heads(static_cast<int32_t>(*heads));
  request.set_causal(c.Bool("causal").value_or(false));
  if (auto scale = c.Double("scale")) request.set_scale(*scale);
  if (auto offset = c.Int("query_offset")) request.set_query_offset(*offset);
  request.set_return_probs(c.expected.count("probs") > 0);
  request.set_raw_output(RequestsRawOutput(c, encoding));
  request.set_output_dtype(OutputDataType(c));
  if (auto heads = c.Int("num_kv_heads")) request.set_num_kv_heads(static_cast<int32_t>(*heads));
  if (auto lengths = c.IntList("kv_lengths")) {
    for (int64_t length : *lengths) request.add_kv_lengths(length);
  }
  if (auto window = c.Int("window")) request.set_window(*window);
  if (auto softcap = c.Double("softcap")) request.set_softcap(*softcap);
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
  request.set_raw_output(RequestsRawOutput(c, encoding));
  request.set_output_dtype(OutputDataType(c));
  return request;
}

std::string CheckAttendResponse(const GoldenCase& c, const v1::AttendResponse& response,
                                WireEncoding encoding) {
  std::string failures;
  for (const auto& [name, expected] : c.expected) {
    const v1::Tensor* got = name == "out"     ? &response.out()
                            : name == "probs" ? &response.probs()
                                              : nullptr;
    if (got == nullptr) {
      absl::StrAppend(&failures, name, ": not an AttendResponse field\n");
      continue;
    }
    const std::string diff = CheckTensor(c, name, expected, *got, encoding);
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
    const std::string diff = CheckTensor(c, name, expected, it->second, encoding);
    if (!diff.empty()) absl::StrAppend(&failures, diff, "\n");
  }
  for (const auto& [name, tensor] : response.outputs()) {
    if (c.expected.count(name) == 0) absl::StrAppend(&failures, name, ": not expected\n");
  }
  return failures;
}

}  // namespace attnserve::testing

namespace attnserve::testing {

absl::StatusOr<std::vector<v1::DecodeRequest>> ToDecodeRequests(const GoldenCase& c,
                                                                WireEncoding encoding) {
  if (c.op != "decode") return absl::InvalidArgumentError(absl::StrCat(c.name, ": not a decode"));
  std::vector<v1::DecodeRequest> messages(1);
  v1::DecodeOpen* open = messages[0].mutable_open();
  std::set<std::string> used;
  if (absl::Status s = FillMethod(c, encoding, open->mutable_method(), &used); !s.ok()) return s;
  for (const auto& [name, tensor] : c.inputs) {
    if (used.count(name) > 0) continue;
    v1::Tensor* field = RequestTensor(open, name);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("input ", name, " has no DecodeOpen field"));
    }
    FillTensor(tensor, encoding, field);
  }
  open->set_batch(static_cast<int32_t>(c.Int("batch").value_or(0)));
  open->set_num_heads(static_cast<int32_t>(c.Int("num_heads").value_or(0)));
  open->set_num_kv_heads(static_cast<int32_t>(c.Int("num_kv_heads").value_or(0)));
  open->set_head_dim(static_cast<int32_t>(c.Int("head_dim").value_or(0)));
  open->set_value_dim(static_cast<int32_t>(c.Int("value_dim").value_or(0)));
  open->set_max_len(c.Int("max_len").value_or(0));
  if (auto scale = c.Double("scale")) open->set_scale(*scale);
  if (auto window = c.Int("window")) open->set_window(*window);
  if (auto softcap = c.Double("softcap")) open->set_softcap(*softcap);
  open->set_raw_output(RequestsRawOutput(c, encoding));
  open->set_output_dtype(OutputDataType(c));
  for (const GoldenStep& step : c.steps) {
    v1::DecodeRequest& message = messages.emplace_back();
    if (step.kind == "truncate") {
      message.mutable_truncate()->set_length(step.length);
      continue;
    }
    v1::DecodeStep* s = message.mutable_step();
    for (const auto& [name, tensor] : step.inputs) {
      v1::Tensor* field = RequestTensor(s, name);
      if (field == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("input ", name, " has no DecodeStep field"));
      }
      FillTensor(tensor, encoding, field);
    }
    s->set_return_probs(step.return_probs);
  }
  return messages;
}

std::string CheckDecodeResponse(const GoldenCase& c, size_t message,
                                const v1::DecodeResponse& response, WireEncoding encoding) {
  std::string failures;
  if (message == 0 || message > c.steps.size()) {
    if (message != 0) return absl::StrCat("message ", message, ": the case has no such step");
    if (response.length() != 0)
      absl::StrAppend(&failures, "open: length ", response.length(), "\n");
    if (response.has_out() || response.has_probs())
      absl::StrAppend(&failures, "open: tensors set\n");
    return failures;
  }
  const GoldenStep& step = c.steps[message - 1];
  const std::string where = absl::StrCat("steps[", message - 1, "] ");
  if (step.expected_length && response.length() != *step.expected_length) {
    absl::StrAppend(&failures, where, "length ", response.length(), ", expected ",
                    *step.expected_length, "\n");
  }
  for (const auto& [name, expected] : step.expected) {
    const v1::Tensor* got = name == "out"     ? &response.out()
                            : name == "probs" ? &response.probs()
                                              : nullptr;
    if (got == nullptr) {
      absl::StrAppend(&failures, where, name, ": not a DecodeResponse field\n");
      continue;
    }
    const std::string diff = CheckTensor(c, name, expected, *got, encoding);
    if (!diff.empty()) absl::StrAppend(&failures, where, diff, "\n");
  }
  if (step.expected.count("probs") == 0 && response.has_probs()) {
    absl::StrAppend(&failures, where, "probs: returned though not requested\n");
  }
  if (step.kind == "truncate" && response.has_out()) {
    absl::StrAppend(&failures, where, "truncate: out set\n");
  }
  return failures;
}

}  // namespace attnserve::testing
