// none: plain scaled dot-product attention.
// Vaswani et al. 2017, "Attention Is All You Need", eq. (1):
//   score(i, j) = scale * (q_i . k_j)
// It has no encode form.
#include <memory>
#include <utility>

#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

class NoPosition final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kNone; }
  absl::string_view description() const override {
    return "Scaled dot-product attention with no positional information (Vaswani et al. 2017, "
           "eq. 1).";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  bool keeps_qkv_values() const override { return true; }
  std::vector<InputSpec> attend_inputs() const override { return {{"q"}, {"k"}, {"v"}}; }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    prepared.modifier = std::make_unique<ScaledDotProduct>(prepared.problem.scale);
    return prepared;
  }
};

}  // namespace

const PositionalMethod& NoneMethod() {
  static const NoPosition* const method = new NoPosition();
  return *method;
}

}  // namespace attnserve::kernels
