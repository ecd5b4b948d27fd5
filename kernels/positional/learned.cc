// learned: a learned absolute position table added to the inputs.
// The position-embedding lookup of GPT-2 / BERT-style models (Vaswani et al.
// 2017 report it as an alternative to sinusoids), positional-methods.md 2.3:
//   y[b, s] = x[b, s] + table[offset + s]
// Attend is 2.2 with P = table. The table is never extrapolated, clamped or
// wrapped: any position outside [0, max_len) is OUT_OF_RANGE, checked after
// every shape and parameter rule (api.md: INVALID_ARGUMENT wins).
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

absl::Status CheckTable(const Tensor& table, int64_t d_model) {
  ATTN_RETURN_IF_ERROR(ExpectRank(table, "table", 2, "[max_len,d_model]"));
  return ExpectDim(table, "table", 1, d_model,
                   absl::StrCat("[max_len,d_model=", d_model, "] to match the inputs"));
}

// Positions first .. first + count - 1 must lie in [0, max_len).
absl::Status CheckPositions(int64_t first, int64_t count, int64_t max_len,
                            absl::string_view field, absl::string_view what) {
  if (first < 0 || first > max_len - count) {
    return absl::OutOfRangeError(absl::StrCat(
        field, ": ", what, " use positions ", first, " .. ", first, " + ", count - 1,
        ", outside the learned table's rows 0 .. ", max_len - 1, " (max_len=", max_len, ")"));
  }
  return absl::OkStatus();
}

class Learned final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kLearned; }
  absl::string_view description() const override {
    return "Learned absolute position table added to the inputs before the Q/K/V projections "
           "(GPT-2/BERT); positions outside the table are OUT_OF_RANGE.";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"table", "tensor", "", "[max_len,d_model]", {"encode", "attend"}},
            {"offset", "int", "0", "0 <= offset, offset + S <= max_len", {"encode"}},
            {"num_heads", "int", "", ">= 1; divides the widths of w_q, w_k, w_v", {"attend"}},
            {"x", "tensor", "", "[B,S,d_model]", {"encode"}},
            {"x_q", "tensor", "", "[B,Sq,d_model]; query_offset + Sq <= max_len", {"attend"}},
            {"x_kv", "tensor", "", "[B,Sk,d_model]; Sk <= max_len", {"attend"}},
            {"w_q", "tensor", "", "[d_model,H*D]", {"attend"}},
            {"w_k", "tensor", "", "[d_model,H*D]", {"attend"}},
            {"w_v", "tensor", "", "[d_model,H*Dv]", {"attend"}}};
  }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"x_q"}, {"x_kv"}, {"w_q"}, {"w_k"}, {"w_v"}, {"table"}};
  }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const ProjectionGeometry g, CheckProjectionInputs(args, options));
    const Tensor& table = args.inputs.at("table");
    ATTN_RETURN_IF_ERROR(CheckTable(table, g.d_model));
    const int64_t max_len = table.dim(0);
    ATTN_RETURN_IF_ERROR(CheckPositions(g.query_offset, g.sq, max_len, "query_offset",
                                        absl::StrCat("the Sq=", g.sq, " queries")));
    ATTN_RETURN_IF_ERROR(
        CheckPositions(0, g.sk, max_len, "x_kv", absl::StrCat("the Sk=", g.sk, " keys")));
    const float* rows = table.data();
    const int64_t d_model = g.d_model;
    const AddPositions add = [rows, d_model](int64_t first, int64_t count, float* x,
                                             const ComputeOptions& /*options*/) {
      const float* p = rows + first * d_model;
      for (int64_t n = 0; n < count * d_model; ++n) x[n] += p[n];
    };
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, ProjectWithPositions(args, g, add, options));
    prepared.modifier = std::make_unique<ScaledDotProduct>(prepared.problem.scale);
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"x"}, {"table"}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    Tensor& x = args.inputs.at("x");
    const Tensor& table = args.inputs.at("table");
    ATTN_RETURN_IF_ERROR(ExpectRank(x, "x", 3, "[B,S,d_model]"));
    const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2);
    ATTN_RETURN_IF_ERROR(CheckTable(table, d_model));
    // Above 2^53 an offset is INVALID_ARGUMENT as for every method; below 0
    // it is a position outside the table (OUT_OF_RANGE, api.md).
    if (args.offset > kMaxQueryOffset) ATTN_RETURN_IF_ERROR(ResolveOffset(args.offset).status());
    ATTN_RETURN_IF_ERROR(CheckPositions(args.offset, seq, table.dim(0), "offset",
                                        absl::StrCat("the S=", seq, " rows of x")));
    ATTN_RETURN_IF_ERROR(CheckResultSize({{"y", x.shape()}}, options));
    const float* rows = table.data() + args.offset * d_model;
    float* y = x.data();
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t n = 0; n < seq * d_model; ++n) y[b * seq * d_model + n] += rows[n];
    }
    TensorMap outputs;
    outputs["y"] = std::move(x);
    return outputs;
  }
};

}  // namespace

const PositionalMethod& LearnedMethod() {
  static const Learned* const method = new Learned();
  return *method;
}

}  // namespace attnserve::kernels
