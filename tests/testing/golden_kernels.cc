#include "tests/testing/golden_kernels.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace attnserve::testing {

absl::StatusOr<kernels::MethodParams> ToMethodParams(const GoldenCase& c) {
  kernels::MethodParams p;
  p.base = c.Double("base");
  if (auto layout = c.String("layout")) {
    if (*layout == "interleaved") {
      p.rope_layout = kernels::RopeLayout::kInterleaved;
    } else if (*layout == "half") {
      p.rope_layout = kernels::RopeLayout::kHalf;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("layout: unknown value ", *layout));
    }
  }
  if (auto scaling = c.String("scaling")) {
    if (*scaling == "none") {
      p.rope_scaling = kernels::RopeScaling::kNone;
    } else if (*scaling == "linear") {
      p.rope_scaling = kernels::RopeScaling::kLinear;
    } else if (*scaling == "ntk") {
      p.rope_scaling = kernels::RopeScaling::kNtk;
    } else if (*scaling == "yarn") {
      p.rope_scaling = kernels::RopeScaling::kYarn;
    } else if (*scaling == "llama3") {
      p.rope_scaling = kernels::RopeScaling::kLlama3;
    } else if (*scaling == "dynamic_ntk") {
      p.rope_scaling = kernels::RopeScaling::kDynamicNtk;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("scaling: unknown value ", *scaling));
    }
  }
  p.scaling_factor = c.Double("scaling_factor");
  p.rotary_dim = c.Int("rotary_dim");
  p.original_max_position = c.Int("original_max_position");
  p.beta_fast = c.Double("beta_fast");
  p.beta_slow = c.Double("beta_slow");
  p.attention_factor = c.Double("attention_factor");
  p.low_freq_factor = c.Double("low_freq_factor");
  p.high_freq_factor = c.Double("high_freq_factor");
  p.d_rel = c.Int("d_rel").value_or(0);
  p.max_relative_position = c.Int("max_relative_position");
  return p;
}

kernels::TensorMap ToTensors(const GoldenTensors& tensors) {
  kernels::TensorMap inputs;
  for (const auto& [name, t] : tensors) inputs[name] = kernels::Tensor(t.shape, t.AsFloats());
  return inputs;
}

namespace {

absl::StatusOr<kernels::MethodKind> Kind(const GoldenCase& c) {
  auto kind = kernels::MethodFromName(c.method);
  if (!kind) return absl::InvalidArgumentError(absl::StrCat("unknown method ", c.method));
  return *kind;
}

// method, params and inputs: the part AttendArgs and EncodeArgs share.
template <typename Args>
absl::Status FillCommon(const GoldenCase& c, Args* args) {
  auto kind = Kind(c);
  if (!kind.ok()) return kind.status();
  args->method = *kind;
  auto params = ToMethodParams(c);
  if (!params.ok()) return params.status();
  args->params = *params;
  args->inputs = ToTensors(c.inputs);
  return absl::OkStatus();
}

bool IsSessionRule(const std::vector<std::string>& fields) {
  for (const std::string& f : fields) {
    if (f == "max_len" || f == "truncate.length") return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const GoldenCase& c) {
  kernels::AttendArgs args;
  if (absl::Status s = FillCommon(c, &args); !s.ok()) return s;
  args.num_heads = c.Int("num_heads").value_or(0);
  args.causal = c.Bool("causal").value_or(false);
  args.scale = c.Double("scale");
  args.query_offset = c.Int("query_offset");
  args.return_probs = c.expected.count("probs") > 0;
  args.num_kv_heads = c.Int("num_kv_heads").value_or(0);
  args.kv_lengths = c.IntList("kv_lengths").value_or(std::vector<int64_t>{});
  args.window = c.Int("window");
  args.softcap = c.Double("softcap");
  return args;
}

absl::StatusOr<kernels::EncodeArgs> ToEncodeArgs(const GoldenCase& c) {
  kernels::EncodeArgs args;
  if (absl::Status s = FillCommon(c, &args); !s.ok()) return s;
  args.offset = c.Int("offset").value_or(0);
  args.sq = c.Int("sq").value_or(0);
  args.sk = c.Int("sk").value_or(0);
  args.query_offset = c.Int("query_offset");
  args.num_heads = c.Int("num_heads").value_or(0);
  return args;
}

absl::StatusOr<RefDecodeOpen> ToRefDecodeOpen(const GoldenCase& c) {
  RefDecodeOpen open;
  auto kind = Kind(c);
  if (!kind.ok()) return kind.status();
  open.method = *kind;
  auto params = ToMethodParams(c);
  if (!params.ok()) return params.status();
  open.params = *params;
  open.tensors = ToTensors(c.inputs);
  open.batch = c.Int("batch").value_or(0);
  open.num_heads = c.Int("num_heads").value_or(0);
  open.num_kv_heads = c.Int("num_kv_heads").value_or(0);
  open.head_dim = c.Int("head_dim").value_or(0);
  open.value_dim = c.Int("value_dim").value_or(0);
  open.max_len = c.Int("max_len").value_or(0);
  open.scale = c.Double("scale");
  open.window = c.Int("window");
  open.softcap = c.Double("softcap");
  return open;
}

std::string KernelSkipReason(const GoldenCase& c) {
  auto tensors = [&](const GoldenTensors& inputs) -> std::string {
    for (const auto& [name, t] : inputs) {
      if (t.wire_data && t.dtype != GoldenDtype::kFloat32) {
        return absl::StrCat(name, ": a 16-bit dtype on data (a wire rule)");
      }
      if (!t.RawLengthMatches()) return absl::StrCat(name, ": raw_data length (a wire rule)");
      if (t.raw_bytes && t.dtype != GoldenDtype::kFloat32) {
        return absl::StrCat(name, ": 16-bit raw_data (decoded by the server)");
      }
    }
    return "";
  };
  if (std::string reason = tensors(c.inputs); !reason.empty()) return reason;
  for (const GoldenStep& s : c.steps) {
    if (std::string reason = tensors(s.inputs); !reason.empty()) return reason;
  }
  if (c.RawOutputForbidden() && c.OutputDtype() != GoldenDtype::kFloat32) {
    return "output_dtype without raw_output (a wire rule)";
  }
  return "";
}

namespace {

std::string CompareOutputs(const GoldenCase& c, const kernels::TensorMap& got) {
  std::string failures;
  for (const auto& [name, expected] : c.expected) {
    auto it = got.find(name);
    if (it == got.end()) {
      absl::StrAppend(&failures, name, ": missing from the result\n");
      continue;
    }
    const std::string diff =
        CompareTensor(name, expected, it->second.shape(), it->second.values(), c.rtol, c.atol);
    if (!diff.empty()) absl::StrAppend(&failures, diff, "\n");
  }
  for (const auto& [name, tensor] : got) {
    if (c.expected.count(name) == 0 && !(name == "probs")) {
      absl::StrAppend(&failures, name, ": returned but not expected\n");
    }
  }
  return failures;
}

std::string CheckError(const GoldenCase& c, const absl::Status& status) {
  return CheckExpectedError(c, status.code(), status.message());
}

std::string RunDecode(const GoldenCase& c, const kernels::ComputeOptions& options) {
  std::string failures;
  for (size_t n = 0; n < c.steps.size(); ++n) {
    const GoldenStep& step = c.steps[n];
    if (step.kind != "step") continue;
    if (!step.expect_error.empty() && IsSessionRule(step.expect_field)) continue;
    auto attend = DecodeStepAsAttendCase(c, n);
    // A step whose tensors do not fit the session (its expected error) has
    // no equivalent Attend: only a session can check it.
    if (!attend.ok() && !step.expect_error.empty()) continue;
    if (!attend.ok()) return std::string(attend.status().message());
    const std::string diff = RunGoldenThroughKernels(*attend, options);
    if (!diff.empty()) absl::StrAppend(&failures, "steps[", n, "]: ", diff, "\n");
  }
  return failures;
}

}  // namespace

std::string RunGoldenThroughKernels(const GoldenCase& c, const kernels::ComputeOptions& options) {
  if (c.op == "attend") {
    auto args = ToAttendArgs(c);
    if (!args.ok()) return CheckError(c, args.status());
    auto result = kernels::Attend(*std::move(args), options);
    if (!result.ok() || !c.expect_error.empty()) return CheckError(c, result.status());
    kernels::TensorMap got;
    got["out"] = std::move(result->out);
    if (result->probs) got["probs"] = std::move(*result->probs);
    return CompareOutputs(c, got);
  }
  if (c.op == "encode") {
    auto args = ToEncodeArgs(c);
    if (!args.ok()) return CheckError(c, args.status());
    auto result = kernels::Encode(*std::move(args), options);
    if (!result.ok() || !c.expect_error.empty()) return CheckError(c, result.status());
    return CompareOutputs(c, result->outputs);
  }
  if (c.op == "decode") return RunDecode(c, options);
  return absl::StrCat("unknown op ", c.op);
}

}  // namespace attnserve::testing
