#include "kernels/attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/fast_attention.h"
#include "kernels/plain_attention.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

// Rejects tensors the op does not take (a caller's bug, not to be ignored:
// api.md "Which inputs an op takes") and missing required ones.
absl::Status CheckInputNames(const TensorMap& inputs, const std::vector<InputSpec>& specs,
                             absl::string_view method, absl::string_view op) {
  for (const auto& [name, tensor] : inputs) {
    bool known = false;
    for (const InputSpec& spec : specs) known = known || spec.name == name;
    if (!known) {
      std::vector<std::string> names;
      for (const InputSpec& spec : specs) names.emplace_back(spec.name);
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": not an input of ", method, " ", op, " (it takes ",
          names.empty() ? "no tensors" : absl::StrJoin(names, ", "), ")"));
    }
  }
  for (const InputSpec& spec : specs) {
    if (spec.required && inputs.find(spec.name) == inputs.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.name, ": required by ", method, " ", op, ", not set"));
    }
  }
  return absl::OkStatus();
}

// NaN or infinity in an input has no defined attention; name the first one.
// First the shape itself (1.1: every dimension >= 1, data to match): a Tensor
// built without Tensor::Create is unchecked, and Sk = 0 would leave the
// softmax no key to read. Without scan_qkv the values of q, k and v are left
// to the fast engine, which checks them as it packs them.
absl::Status CheckInputValues(const TensorMap& inputs, bool scan_qkv) {
  for (const auto& [name, tensor] : inputs) {
    ATTN_ASSIGN_OR_RETURN(const int64_t count, CheckedElementCount(tensor.shape(), name));
    if (count != tensor.size()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".data: shape ",
                                                     ShapeToString(tensor.shape()), " needs ",
                                                     count, " values, got ", tensor.size()));
    }
    if (!scan_qkv && (name == "q" || name == "k" || name == "v")) continue;
    ATTN_RETURN_IF_ERROR(CheckFiniteValues(tensor, name));
  }
  return absl::OkStatus();
}

absl::Status CheckFiniteOutput(const Tensor& out) {
  if (!AllFinite(out.data(), out.size())) return OutputOverflowError();
  return absl::OkStatus();
}

}  // namespace

absl::string_view MethodName(MethodKind kind) {
  switch (kind) {
    case MethodKind::kNone: return "none";
    case MethodKind::kSinusoidal: return "sinusoidal";
    case MethodKind::kLearned: return "learned";
    case MethodKind::kRope: return "rope";
    case MethodKind::kTransformerXL: return "transformer_xl";
    case MethodKind::kShaw: return "shaw";
    case MethodKind::kAlibi: return "alibi";
    case MethodKind::kDaTransformer: return "da_transformer";
  }
  return "unknown";
}

std::optional<MethodKind> MethodFromName(absl::string_view name) {
  for (MethodKind kind : kAllMethods) {
    if (MethodName(kind) == name) return kind;
  }
  return std::nullopt;
}

const PositionalMethod& GetMethod(MethodKind kind) {
  switch (kind) {
    case MethodKind::kNone: return NoneMethod();
    case MethodKind::kSinusoidal: return SinusoidalMethod();
    case MethodKind::kLearned: return LearnedMethod();
    case MethodKind::kRope: return RopeMethod();
    case MethodKind::kTransformerXL: return TransformerXlMethod();
    case MethodKind::kShaw: return ShawMethod();
    case MethodKind::kAlibi: return AlibiMethod();
    case MethodKind::kDaTransformer: return DaTransformerMethod();
  }
  return NoneMethod();  // Unreachable: the switch is exhaustive.
}

absl::StatusOr<TensorMap> PositionalMethod::Encode(EncodeArgs& /*args*/,
                                                   const ComputeOptions& /*options*/) const {
  return absl::InvalidArgumentError(
      absl::StrCat("method: ", MethodName(kind()), " has no encode form"));
}

Tensor AttendOutput(std::vector<int64_t> shape, const ComputeOptions& options) {
  float* const storage = options.out_storage ? options.out_storage(shape) : nullptr;
  if (storage == nullptr) return Tensor::Uninitialized(std::move(shape));
  return Tensor::MutableView(std::move(shape), storage);
}

absl::StatusOr<AttendResult> Attend(AttendArgs args, const ComputeOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  const Clock::time_point start = Clock::now();
  const PositionalMethod& method = GetMethod(args.method);
  ATTN_RETURN_IF_ERROR(
      CheckInputNames(args.inputs, method.attend_inputs(), MethodName(args.method), "attend"));
  // The fast engine checks q, k and v on its threads as it packs them (the
  // data is read then anyway) when the method hands them over unchanged.
  const bool engine_checks_qkv =
      !options.inputs_checked && options.engine == Engine::kFast && method.keeps_qkv_values();
  if (!options.inputs_checked) {
    ATTN_RETURN_IF_ERROR(CheckInputValues(args.inputs, !engine_checks_qkv));
  }
  const bool return_probs = args.return_probs;
  const Clock::time_point checked = Clock::now();
  ATTN_ASSIGN_OR_RETURN(PreparedAttention prepared, method.PrepareAttend(args, options));
  const AttentionProblem& p = prepared.problem;
  if (return_probs) {
    ATTN_RETURN_IF_ERROR(CheckOutputSize({p.batch, p.heads, p.sq, p.sk}, "probs", options));
  }
  const Clock::time_point engine_start = Clock::now();
  ATTN_ASSIGN_OR_RETURN(AttendResult result,
                        options.engine == Engine::kPlain
                            ? RunPlainAttention(prepared, return_probs, options)
                            : RunFastAttention(prepared, return_probs, options,
                                               engine_checks_qkv));
  const Clock::time_point engine_end = Clock::now();
  // The fast engine checks its output rows on its threads as it writes them.
  if (options.engine == Engine::kPlain) ATTN_RETURN_IF_ERROR(CheckFiniteOutput(result.out));
  result.timings.check_seconds = seconds(checked - start) + seconds(Clock::now() - engine_end);
  result.timings.prepare_seconds = seconds(engine_start - checked);
  result.timings.engine_seconds = seconds(engine_end - engine_start);
  return result;
}

absl::StatusOr<EncodeResult> Encode(EncodeArgs args, const ComputeOptions& options) {
  const PositionalMethod& method = GetMethod(args.method);
  if (!method.has_encode()) {
    return absl::InvalidArgumentError(
        absl::StrCat("method: ", MethodName(args.method), " has no encode form"));
  }
  ATTN_RETURN_IF_ERROR(
      CheckInputNames(args.inputs, method.encode_inputs(), MethodName(args.method), "encode"));
  if (!options.inputs_checked) ATTN_RETURN_IF_ERROR(CheckInputValues(args.inputs, true));
  EncodeResult result;
  ATTN_ASSIGN_OR_RETURN(result.outputs, method.Encode(args, options));
  return result;
}

std::vector<MethodInfo> DescribeMethods() {
  const std::vector<std::string> attend_only = {"attend"};
  std::vector<MethodInfo> methods;
  for (MethodKind kind : kAllMethods) {
    const PositionalMethod& method = GetMethod(kind);
    MethodInfo info;
    info.kind = kind;
    info.name = std::string(MethodName(kind));
    info.description = std::string(method.description());
    info.parameters = method.parameters();
    // The parameters every attend form shares (positional-methods.md 1.2-1.4);
    // one the method lists already for encode gains the attend op instead.
    const ParameterInfo common[] = {
        {"causal", "bool", "false", "mask keys after the query's position", attend_only},
        {"scale", "double", "1/sqrt(D)", "finite; any sign", attend_only},
        {"query_offset", "int", "Sk - Sq", "query i sits at position query_offset + i; >= 0",
         attend_only},
        {"return_probs", "bool", "false", "also return probs [B,H,Sq,Sk]", attend_only},
        // attention-variants.md 1-5.
        {"num_kv_heads", "int", "num_heads",
         kind == MethodKind::kSinusoidal || kind == MethodKind::kLearned
             ? "H_kv of w_k [d_model,H_kv*D] and w_v [d_model,H_kv*Dv]; 0 or a divisor of "
               "num_heads; query head h reads key/value head h / (H / H_kv)"
             : "0 or k.shape[1] (k and v carry H_kv heads, H % H_kv == 0); query head h reads "
               "key/value head h / (H / H_kv)",
         attend_only},
        {"kv_lengths", "int", "",
         "repeated: empty (every key valid) or B values, 1 <= L_b <= Sk; key j of item b is "
         "visible iff j < L_b",
         attend_only},
        {"window", "int", "",
         "unset (no window) or >= 1; causal: key j visible iff p - W < j <= p, else iff "
         "|p - j| < W (p = query_offset + i)",
         attend_only},
        {"softcap", "double", "",
         "unset or finite > 0: every final logit l becomes softcap * tanh(l / softcap)",
         attend_only},
    };
    for (const ParameterInfo& param : common) {
      auto same = std::find_if(info.parameters.begin(), info.parameters.end(),
                               [&](const ParameterInfo& p) { return p.name == param.name; });
      if (same == info.parameters.end()) {
        info.parameters.push_back(param);
      } else {
        same->ops.push_back("attend");
      }
    }
    methods.push_back(std::move(info));
  }
  return methods;
}

}  // namespace attnserve::kernels
