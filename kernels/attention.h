// The kernels' public entry points: Encode and Attend for every positional
// method of positional-methods.md, on plain float32 tensors.
//
// This layer knows nothing of gRPC or protobuf (server/convert.cc maps the
// wire messages onto these types). Every rule of the spec is checked here,
// before any compute, so every caller gets the same answers:
//   INVALID_ARGUMENT   shapes, missing or extra inputs, parameter values
//   OUT_OF_RANGE       a position outside a learned table (checked last)
//   RESOURCE_EXHAUSTED an output or intermediate above ComputeOptions limits
//   CANCELLED          ComputeOptions::cancelled was set while computing
// Messages name the field (`k.shape`, `rotary_dim`, ...) and the rule.
//
// Thread-safety: Attend and Encode are reentrant; they share no state.
#ifndef ATTNSERVE_KERNELS_ATTENTION_H_
#define ATTNSERVE_KERNELS_ATTENTION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace attnserve::kernels {

enum class MethodKind {
  kNone,
  kSinusoidal,
  kLearned,
  kRope,
  kTransformerXL,
  kShaw,
  kAlibi,
  kDaTransformer,
};

inline constexpr MethodKind kAllMethods[] = {
    MethodKind::kNone, MethodKind::kSinusoidal,    MethodKind::kLearned, MethodKind::kRope,
    MethodKind::kTransformerXL, MethodKind::kShaw, MethodKind::kAlibi,   MethodKind::kDaTransformer,
};

// The spec's identifier: "none", "sinusoidal", ..., "da_transformer".
absl::string_view MethodName(MethodKind kind);
std::optional<MethodKind> MethodFromName(absl::string_view name);

enum class RopeLayout { kInterleaved, kHalf };
enum class RopeScaling { kNone, kLinear, kNtk, kYarn, kLlama3, kDynamicNtk };

// The scalar parameters of every method; each method reads its own (see its
// file under positional/). An unset optional means the spec's default.
struct MethodParams {
  std::optional<double> base;                    // sinusoidal, rope, transformer_xl
  RopeLayout rope_layout = RopeLayout::kInterleaved;
  RopeScaling rope_scaling = RopeScaling::kNone;
  std::optional<double> scaling_factor;          // rope; when set, > 0
  std::optional<int64_t> rotary_dim;             // rope; unset: D
  // rope's yarn, llama3 and dynamic_ntk scalings (attention-variants.md 7);
  // unset: the spec's defaults (original_max_position has none: required).
  std::optional<int64_t> original_max_position;
  std::optional<double> beta_fast, beta_slow, attention_factor;  // yarn
  std::optional<double> low_freq_factor, high_freq_factor;       // llama3
  int64_t d_rel = 0;                             // transformer_xl; required
  std::optional<int64_t> max_relative_position;  // shaw; required
};

// Tensors by their spec names: q, k, v, x_q, x_kv, w_q, w_k, w_v, x, table,
// distances, pos_bias_u, pos_bias_v, w_r, rel_k, rel_v, dist_w, dist_v,
// slopes (ALiBi's custom slopes, attention-variants.md 7).
using TensorMap = std::map<std::string, Tensor, std::less<>>;

struct AttendArgs {
  MethodKind method = MethodKind::kNone;
  MethodParams params;
  TensorMap inputs;
  int64_t num_heads = 0;                // absolute methods: required; others: 0 or H
  bool causal = false;
  std::optional<double> scale;          // unset: 1/sqrt(D)
  std::optional<int64_t> query_offset;  // unset: Sk - Sq
  bool return_probs = false;
  // attention-variants.md 1-5. q/k/v methods: H_kv is k.shape[1] and
  // num_kv_heads is 0 or equal to it; absolute methods: H_kv of w_k, w_v
  // (0: num_heads).
  int64_t num_kv_heads = 0;
  std::vector<int64_t> kv_lengths;  // empty: every key valid; else B lengths
  std::optional<int64_t> window;    // sliding window W >= 1
  std::optional<double> softcap;    // finite c > 0
};

// Where one Attend call's wall-clock time went, in seconds (steady_clock;
// four clock reads per call). The phases do not overlap and add up to the
// call's time inside Attend.
struct AttendTimings {
  // Input names and finite values, and the output's finite check.
  double check_seconds = 0;
  // The method's input side (PositionalMethod::PrepareAttend): shape rules,
  // tables, RoPE's rotation, the absolute methods' Q/K/V projections.
  double prepare_seconds = 0;
  // The attention engine itself: scores, softmax, values (the "attention
  // part" that PERFORMANCE.md compares with the matmul ceiling).
  double engine_seconds = 0;
};

struct AttendResult {
  Tensor out;                  // [B, H, Sq, Dv]
  std::optional<Tensor> probs; // [B, H, Sq, Sk] when requested
  AttendTimings timings;       // Filled by Attend.
};

struct EncodeArgs {
  MethodKind method = MethodKind::kNone;
  MethodParams params;
  TensorMap inputs;
  int64_t offset = 0;                   // sinusoidal, learned, rope
  int64_t sq = 0;                       // shaw, alibi, da_transformer
  int64_t sk = 0;                       // shaw, alibi, da_transformer
  std::optional<int64_t> query_offset;  // shaw, alibi, da_transformer; unset: sk - sq
  int64_t num_heads = 0;                // alibi
};

struct EncodeResult {
  TensorMap outputs;  // names as in positional-methods.md 3.2
};

// Which attention engine runs the scores and softmax. kFast is the tiled,
// fused engine (fast_attention.h); kPlain is the foundation's row-at-a-time
// engine with double accumulation, kept as the baseline the fast one is
// measured and tested against.
enum class Engine { kFast, kPlain };

struct ComputeOptions {
  Engine engine = Engine::kFast;
  // Threads for this call's parallel loops (OpenMP); 1 runs inline.
  int threads = 1;
  // Largest element count of any one output or intermediate tensor; above it
  // the call fails with RESOURCE_EXHAUSTED before allocating.
  int64_t max_elements = int64_t{1} << 28;
  // Largest total size of the call's result tensors (Attend: out and probs;
  // Encode: every output), in bytes at 4 per float32 value; above it the
  // call fails with RESOURCE_EXHAUSTED before any compute. The server sets
  // it to what one response message can carry (--max_message_bytes).
  int64_t max_result_bytes = std::numeric_limits<int64_t>::max();
  // Polled between rows (plain) or blocks of query rows (fast), and between
  // rows or runs of rows of every encode and projection loop; once true the
  // call stops with CANCELLED.
  const std::atomic<bool>* cancelled = nullptr;
  // The caller vouches that every input's values match its shape (every
  // dimension >= 1) and are finite, having checked them while writing them
  // (server/convert.cc does); skips the kernels' own scan of the inputs.
  bool inputs_checked = false;
  // Where Attend writes its output `out` [B,H,Sq,Dv] (issue 13 item 4: the
  // server's float32 raw_data response is written once, by the engine):
  // when set, called once with out's shape, after every rule is checked and
  // before the engine runs; it returns zero-filled, writable storage for
  // product(shape) values (4-byte aligned) that outlives the result, or null
  // to have the kernels allocate. The result's out is then a
  // Tensor::MutableView of it.
  std::function<float*(absl::Span<const int64_t> shape)> out_storage;
};

// Multi-head attention under args.method. Consumes args (inputs are moved
// into the computation, e.g. RoPE rotates q and k in place).
absl::StatusOr<AttendResult> Attend(AttendArgs args, const ComputeOptions& options);

// The encode form of args.method (none has none: INVALID_ARGUMENT).
absl::StatusOr<EncodeResult> Encode(EncodeArgs args, const ComputeOptions& options);

// What ListMethods reports: one entry per method, parameters in spec order.
struct ParameterInfo {
  std::string name;
  std::string type;           // "bool", "int", "double", "enum", "tensor"
  std::string default_value;  // empty when required
  std::string rule;
  std::vector<std::string> ops;  // "encode", "attend"
};
struct MethodInfo {
  MethodKind kind;
  std::string name;
  std::string description;
  std::vector<ParameterInfo> parameters;
};
std::vector<MethodInfo> DescribeMethods();

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_ATTENTION_H_
