#include "tests/testing/golden_kernels.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace attnserve::testing {

absl::StatusCode ExpectedCode(const GoldenCase& c) {
  if (c.expect_error == "invalid_argument") return absl::StatusCode::kInvalidArgument;
  if (c.expect_error == "out_of_range") return absl::StatusCode::kOutOfRange;
  return absl::StatusCode::kOk;
}

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
    } else {
      return absl::InvalidArgumentError(absl::StrCat("scaling: unknown value ", *scaling));
    }
  }
  p.scaling_factor = c.Double("scaling_factor");
  p.rotary_dim = c.Int("rotary_dim");
  p.d_rel = c.Int("d_rel").value_or(0);
  p.max_relative_position = c.Int("max_relative_position");
  return p;
}

namespace {

kernels::TensorMap ToTensors(const GoldenCase& c) {
  kernels::TensorMap inputs;
  for (const auto& [name, t] : c.inputs) inputs[name] = kernels::Tensor(t.shape, t.AsFloats());
  return inputs;
}

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
  args->inputs = ToTensors(c);
  return absl::OkStatus();
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

namespace {

std::string CompareOutputs(const GoldenCase& c, const kernels::TensorMap& got) {
  std::string failures;
  for (const auto& [name, expected] : c.expected) {
    auto it = got.find(name);
    if (it == got.end()) {
      absl::StrAppend(&failures, name, ": missing from the result\n");
      continue;
    }
    const std::string diff = CompareTensor(name, expected, it->second.shape(),
                                           it->second.values(), c.rtol, c.atol);
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
  if (status.code() == ExpectedCode(c)) return "";
  return absl::StrCat("expected ", c.expect_error.empty() ? "success" : c.expect_error,
                      ", got ", status.ToString());
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
  return absl::StrCat("unknown op ", c.op);
}

}  // namespace attnserve::testing
