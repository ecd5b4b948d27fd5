#include "kernels/positional/common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/isa.h"
#include "kernels/simd/panels.h"
#include "kernels/onednn_matmul.h"
#include "kernels/parallel.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {

absl::StatusOr<double> ResolveScale(std::optional<double> scale, int64_t d) {
  if (!scale.has_value()) return 1.0 / std::sqrt(static_cast<double>(d));
  if (!std::isfinite(*scale)) {
    return absl::InvalidArgumentError(absl::StrCat("scale: must be finite, got ", *scale));
  }
  return *scale;
}

absl::StatusOr<int64_t> ResolveQueryOffset(std::optional<int64_t> query_offset, int64_t sq,
                                           int64_t sk) {
  if (query_offset.has_value()) {
    if (*query_offset < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("query_offset: must be >= 0, got ", *query_offset));
    }
    // Positions are formed in int64 and in double; past 2^53 neither is exact
    // (and query_offset + i could overflow int64).
    if (*query_offset > kMaxQueryOffset) {
      return absl::InvalidArgumentError(absl::StrCat("query_offset: must be <= 2^53 = ",
                                                     kMaxQueryOffset, ", got ", *query_offset));
    }
    return *query_offset;
  }
  if (sq > sk) {
    return absl::InvalidArgumentError(absl::StrCat(
        "query_offset: the default Sk - Sq = ", sk - sq,
        " is negative (Sq=", sq, " > Sk=", sk, "); pass an explicit query_offset >= 0"));
  }
  return sk - sq;
}

absl::StatusOr<int64_t> ResolveOffset(int64_t offset) {
  if (offset < 0 || offset > kMaxQueryOffset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "offset: must be in 0 .. 2^53 = ", kMaxQueryOffset, " (positions stay exact), got ",
        offset));
  }
  return offset;
}

absl::StatusOr<double> ResolvePositive(std::optional<double> value, double fallback,
                                       absl::string_view name) {
  if (!value.has_value()) return fallback;
  if (!std::isfinite(*value) || *value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": must be finite and > 0, got ", *value));
  }
  return *value;
}

absl::Status ExpectRank(const Tensor& t, absl::string_view name, int rank,
                        absl::string_view layout) {
  if (t.rank() != rank) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".shape: expected ", rank, " dimensions ",
                                                   layout, ", got ", ShapeToString(t.shape())));
  }
  return absl::OkStatus();
}

absl::Status ExpectDim(const Tensor& t, absl::string_view name, int axis, int64_t expected,
                       absl::string_view expected_text) {
  if (t.dim(axis) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".shape: expected ", expected_text,
                                                   ", got ", ShapeToString(t.shape())));
  }
  return absl::OkStatus();
}

absl::Status CheckOutputSize(std::initializer_list<int64_t> shape, absl::string_view what,
                             const ComputeOptions& options) {
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(count, d, &count)) {
      count = -1;
      break;
    }
  }
  if (count < 0 || count > options.max_elements) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": ", ShapeToString(std::vector<int64_t>(shape)), " is more than the ",
        options.max_elements,
        " elements this server allows per tensor (--max_elements, and no more than a response "
        "can carry: --max_message_bytes / 4)"));
  }
  return absl::OkStatus();
}

absl::Status CheckResultSize(std::initializer_list<ResultTensor> tensors,
                             const ComputeOptions& options) {
  const auto count_of = [](const std::vector<int64_t>& shape) {
    int64_t count = 1;
    for (int64_t d : shape) {
      if (d < 0 || __builtin_mul_overflow(count, d, &count)) {
        return std::numeric_limits<int64_t>::max();
      }
    }
    return count;
  };
  // The whole response first: what cannot be sent is the clearer reason.
  int64_t total = 0;
  std::string listed;
  for (const ResultTensor& t : tensors) {
    const int64_t count = count_of(t.shape);
    total = count > std::numeric_limits<int64_t>::max() - total
                ? std::numeric_limits<int64_t>::max()
                : total + count;
    absl::StrAppend(&listed, listed.empty() ? "" : " + ", t.name, " ", ShapeToString(t.shape));
  }
  if (total > options.max_result_bytes / 4) {
    return absl::ResourceExhaustedError(absl::StrCat(
        listed, ": the response would carry ", total, " float32 values (",
        total > std::numeric_limits<int64_t>::max() / 4 ? absl::StrCat("4*", total)
                                                         : absl::StrCat(total * 4),
        " bytes), more than the ", options.max_result_bytes,
        " bytes a response may hold (--max_message_bytes); refused before compute"));
  }
  for (const ResultTensor& t : tensors) {
    if (count_of(t.shape) > options.max_elements) {
      return absl::ResourceExhaustedError(
          absl::StrCat(t.name, ": ", ShapeToString(t.shape), " is more than the ",
                       options.max_elements,
                       " elements this server allows per tensor (--max_elements); refused "
                       "before compute"));
    }
  }
  return absl::OkStatus();
}

bool IsCancelled(const ComputeOptions& options) {
  return options.cancelled != nullptr && options.cancelled->load(std::memory_order_relaxed);
}

absl::Status CheckCancelled(const ComputeOptions& options) {
  if (!IsCancelled(options)) return absl::OkStatus();
  return absl::CancelledError("request: cancelled (by the client, its deadline or server "
                              "shutdown) while computing");
}

absl::Status ExpectPositive(int64_t value, absl::string_view name) {
  if (value < 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": must be >= 1, got ", value));
  }
  return absl::OkStatus();
}

int ThreadsFor(double work, const ComputeOptions& options) {
  // About 20 us of single-core work: below it a team's start-up dominates.
  constexpr double kMinParallelWork = 1 << 16;
  return work < kMinParallelWork ? 1 : options.threads;
}

absl::Status CheckFiniteValues(const Tensor& tensor, absl::string_view name) {
  const float* data = tensor.data();
  if (AllFinite(data, tensor.size())) return absl::OkStatus();
  for (int64_t n = 0; n < tensor.size(); ++n) {
    if (!std::isfinite(data[n])) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".data[", n, "]: must be finite, got ", data[n]));
    }
  }
  return absl::OkStatus();
}

absl::Status OutputOverflowError() {
  return absl::InvalidArgumentError(
      "q, k, scale: the scores overflow float32 (an output is not finite); scale the inputs "
      "down");
}

absl::Status CheckAttendResult(int64_t batch, int64_t heads, int64_t sq, int64_t sk, int64_t dv,
                               bool return_probs, const ComputeOptions& options) {
  if (!return_probs) return CheckResultSize({{"out", {batch, heads, sq, dv}}}, options);
  return CheckResultSize({{"out", {batch, heads, sq, dv}}, {"probs", {batch, heads, sq, sk}}},
                         options);
}

absl::Status ResolveVariants(const AttendArgs& args, int64_t batch, int64_t sk,
                             AttentionProblem& problem) {
  if (!args.kv_lengths.empty()) {
    if (static_cast<int64_t>(args.kv_lengths.size()) != batch) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_lengths: must be empty (every key valid) or hold B=", batch,
                       " lengths, got ", args.kv_lengths.size()));
    }
    for (size_t b = 0; b < args.kv_lengths.size(); ++b) {
      const int64_t length = args.kv_lengths[b];
      if (length < 1 || length > sk) {
        return absl::InvalidArgumentError(absl::StrCat(
            "kv_lengths[", b, "]: must be in 1 .. Sk=", sk, ", got ", length));
      }
    }
  }
  if (args.window.has_value() && *args.window < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("window: must be >= 1 (unset: no window), got ", *args.window));
  }
  if (args.softcap.has_value()) {
    ATTN_ASSIGN_OR_RETURN(problem.softcap, ResolvePositive(args.softcap, 0, "softcap"));
  } else {
    problem.softcap = 0;
  }
  problem.kv_lengths = args.kv_lengths;
  problem.window =
      args.window.has_value() ? std::min(*args.window, AttentionProblem::kMaxWindow) : 0;
  return absl::OkStatus();
}

absl::StatusOr<AttentionProblem> TakeQkvProblem(AttendArgs& args, const ComputeOptions& options) {
  Tensor& q = args.inputs.at("q");
  Tensor& k = args.inputs.at("k");
  Tensor& v = args.inputs.at("v");
  ATTN_RETURN_IF_ERROR(ExpectRank(q, "q", 4, "[B,H,Sq,D]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(k, "k", 4, "[B,H_kv,Sk,D]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(v, "v", 4, "[B,H_kv,Sk,Dv]"));
  const int64_t batch = q.dim(0), heads = q.dim(1), sq = q.dim(2), d = q.dim(3);
  const int64_t kv_heads = k.dim(1), sk = k.dim(2), dv = v.dim(3);
  const std::string k_text =
      absl::StrCat("[B=", batch, ",H_kv,Sk,D=", d, "] to match q");
  ATTN_RETURN_IF_ERROR(ExpectDim(k, "k", 0, batch, k_text));
  ATTN_RETURN_IF_ERROR(ExpectDim(k, "k", 3, d, k_text));
  // Grouped-query attention (attention-variants.md 1): query head h reads
  // key/value head h / (H / H_kv).
  if (kv_heads < 1 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k.shape: its head count H_kv=", kv_heads, " must divide H=", heads,
        " of q (grouped-query attention: H % H_kv == 0), got ", ShapeToString(k.shape())));
  }
  const std::string v_text = absl::StrCat("[B=", batch, ",H_kv=", kv_heads, ",Sk=", sk,
                                          ",Dv] to match q and k");
  ATTN_RETURN_IF_ERROR(ExpectDim(v, "v", 0, batch, v_text));
  ATTN_RETURN_IF_ERROR(ExpectDim(v, "v", 1, kv_heads, v_text));
  ATTN_RETURN_IF_ERROR(ExpectDim(v, "v", 2, sk, v_text));
  if (args.num_heads != 0 && args.num_heads != heads) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads: must be 0 (unset) or H=", heads,
                                                   " of q, got ", args.num_heads));
  }
  if (args.num_kv_heads != 0 && args.num_kv_heads != kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("num_kv_heads: must be 0 (unset) or H_kv=",
                                                   kv_heads, " of k.shape[1], got ",
                                                   args.num_kv_heads));
  }
  ATTN_RETURN_IF_ERROR(CheckAttendResult(batch, heads, sq, sk, dv, args.return_probs, options));

  AttentionProblem problem;
  ATTN_ASSIGN_OR_RETURN(problem.scale, ResolveScale(args.scale, d));
  ATTN_ASSIGN_OR_RETURN(problem.query_offset, ResolveQueryOffset(args.query_offset, sq, sk));
  ATTN_RETURN_IF_ERROR(ResolveVariants(args, batch, sk, problem));
  problem.batch = batch;
  problem.heads = heads;
  problem.kv_heads = kv_heads;
  problem.sq = sq;
  problem.sk = sk;
  problem.d = d;
  problem.dv = dv;
  problem.causal = args.causal;
  problem.q = std::move(q);
  problem.k = std::move(k);
  problem.v = std::move(v);
  return problem;
}

absl::StatusOr<ProjectionGeometry> CheckProjectionInputs(const AttendArgs& args,
                                                         const ComputeOptions& options) {
  const Tensor& x_q = args.inputs.at("x_q");
  const Tensor& x_kv = args.inputs.at("x_kv");
  const Tensor& w_q = args.inputs.at("w_q");
  const Tensor& w_k = args.inputs.at("w_k");
  const Tensor& w_v = args.inputs.at("w_v");
  ATTN_RETURN_IF_ERROR(ExpectRank(x_q, "x_q", 3, "[B,Sq,d_model]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(x_kv, "x_kv", 3, "[B,Sk,d_model]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(w_q, "w_q", 2, "[d_model,H*D]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(w_k, "w_k", 2, "[d_model,H_kv*D]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(w_v, "w_v", 2, "[d_model,H_kv*Dv]"));
  ProjectionGeometry g;
  g.batch = x_q.dim(0);
  g.sq = x_q.dim(1);
  g.d_model = x_q.dim(2);
  g.sk = x_kv.dim(1);
  const std::string kv_text =
      absl::StrCat("[B=", g.batch, ",Sk,d_model=", g.d_model, "] to match x_q");
  ATTN_RETURN_IF_ERROR(ExpectDim(x_kv, "x_kv", 0, g.batch, kv_text));
  ATTN_RETURN_IF_ERROR(ExpectDim(x_kv, "x_kv", 2, g.d_model, kv_text));
  const std::string rows_text = absl::StrCat("[d_model=", g.d_model, ",...] to match x_q");
  ATTN_RETURN_IF_ERROR(ExpectDim(w_q, "w_q", 0, g.d_model, rows_text));
  ATTN_RETURN_IF_ERROR(ExpectDim(w_k, "w_k", 0, g.d_model, rows_text));
  ATTN_RETURN_IF_ERROR(ExpectDim(w_v, "w_v", 0, g.d_model, rows_text));
  if (args.num_heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_heads: required (>= 1) for the absolute methods, got ", args.num_heads));
  }
  g.heads = args.num_heads;
  // attention-variants.md 1: H_kv heads in w_k and w_v, 0 meaning H.
  if (args.num_kv_heads < 0 || (args.num_kv_heads > 0 && g.heads % args.num_kv_heads != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_kv_heads: must be 0 (unset: num_heads) or divide num_heads=", g.heads,
        " (grouped-query attention), got ", args.num_kv_heads));
  }
  g.kv_heads = args.num_kv_heads > 0 ? args.num_kv_heads : g.heads;
  if (w_q.dim(1) % g.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("w_q.shape: width ", w_q.dim(1),
                                                   " must be divisible by num_heads=", g.heads,
                                                   ", got ", ShapeToString(w_q.shape())));
  }
  g.d = w_q.dim(1) / g.heads;
  ATTN_RETURN_IF_ERROR(
      ExpectDim(w_k, "w_k", 1, g.kv_heads * g.d,
                absl::StrCat("[d_model,H_kv*D=", g.kv_heads, "*", g.d, "] to match w_q, ",
                             "num_heads and num_kv_heads")));
  if (w_v.dim(1) % g.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "w_v.shape: width ", w_v.dim(1), " must be divisible by H_kv=", g.kv_heads,
        " (num_kv_heads, or num_heads when unset), got ", ShapeToString(w_v.shape())));
  }
  g.dv = w_v.dim(1) / g.kv_heads;
  ATTN_RETURN_IF_ERROR(CheckOutputSize({g.batch, g.heads, g.sq, g.d}, "q (projected)", options));
  ATTN_RETURN_IF_ERROR(
      CheckOutputSize({g.batch, g.kv_heads, g.sk, g.d}, "k (projected)", options));
  ATTN_RETURN_IF_ERROR(
      CheckOutputSize({g.batch, g.kv_heads, g.sk, g.dv}, "v (projected)", options));
  ATTN_RETURN_IF_ERROR(
      CheckAttendResult(g.batch, g.heads, g.sq, g.sk, g.dv, args.return_probs, options));
  ATTN_RETURN_IF_ERROR(ResolveScale(args.scale, g.d).status());
  ATTN_ASSIGN_OR_RETURN(g.query_offset, ResolveQueryOffset(args.query_offset, g.sq, g.sk));
  AttentionProblem variants;
  ATTN_RETURN_IF_ERROR(ResolveVariants(args, g.batch, g.sk, variants));
  return g;
}

namespace {

// Rows per projection block: a [1024 x d_model] @ [d_model x H*D] matmul
// keeps oneDNN's team busy between fork/joins, and its output block small
// (2 MiB at H*D = 512).
constexpr int64_t kProjectionRows = 1024;

// x [B, S, d_model] (consumed) + P, projected through w into [B, S, n]
// written over x's storage when n <= d_model (each block's output lands on
// rows already read), and through w_second (when set) into second [B*S, n2].
absl::StatusOr<Tensor> ProjectRows(Tensor& x, int64_t first_position,
                                   const AddPositions& add_positions, const Tensor& w,
                                   const Tensor* w_second, float* second,
                                   const ComputeOptions& options) {
  const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2), n = w.dim(1);
  const int64_t total = batch * seq;
  const bool in_place = n <= d_model;
  std::vector<float> fresh(in_place ? 0 : static_cast<size_t>(total * n));
  const int64_t block_rows = std::min(kProjectionRows, total);
  std::vector<float> block(in_place ? static_cast<size_t>(block_rows * n) : 0);
  float* const dst = in_place ? x.data() : fresh.data();
  // P in place first, one pass per batch element.
  for (int64_t b = 0; b < batch; ++b) {
    add_positions(first_position, seq, x.data() + b * seq * d_model, options);
  }
  const int threads = ThreadsFor(static_cast<double>(block_rows) * d_model * n, options);
  for (int64_t r0 = 0; r0 < total; r0 += block_rows) {
    const int64_t rows = std::min(block_rows, total - r0);
    const float* src = x.data() + r0 * d_model;
    if (w_second != nullptr) {
      const int64_t n2 = w_second->dim(1);
      ATTN_RETURN_IF_ERROR(MatMul(rows, d_model, n2, src, d_model, w_second->data(), n2,
                                  second + r0 * n2, n2, threads));
    }
    if (in_place) {
      ATTN_RETURN_IF_ERROR(
          MatMul(rows, d_model, n, src, d_model, w.data(), n, block.data(), n, threads));
      std::copy_n(block.data(), rows * n, dst + r0 * n);
    } else {
      ATTN_RETURN_IF_ERROR(
          MatMul(rows, d_model, n, src, d_model, w.data(), n, dst + r0 * n, n, threads));
    }
  }
  if (!in_place) return Tensor({batch, seq, n}, std::move(fresh));
  // Keeps the capacity: the memory is the input's (its own by now: dst
  // above made a borrowed x copy itself).
  std::vector<float> storage = x.TakeValues();
  storage.resize(static_cast<size_t>(total * n));
  return Tensor({batch, seq, n}, std::move(storage));
}

}  // namespace

absl::StatusOr<AttentionProblem> ProjectWithPositions(AttendArgs& args,
                                                      const ProjectionGeometry& g,
                                                      const AddPositions& add_positions,
                                                      const ComputeOptions& options) {
  AttentionProblem problem;
  ATTN_ASSIGN_OR_RETURN(problem.scale, ResolveScale(args.scale, g.d));
  problem.batch = g.batch;
  problem.heads = g.heads;
  problem.kv_heads = g.kv_heads;
  problem.sq = g.sq;
  problem.sk = g.sk;
  problem.d = g.d;
  problem.dv = g.dv;
  problem.query_offset = g.query_offset;
  problem.causal = args.causal;
  problem.heads_interleaved = true;
  ATTN_RETURN_IF_ERROR(ResolveVariants(args, g.batch, g.sk, problem));
  ATTN_ASSIGN_OR_RETURN(problem.q, ProjectRows(args.inputs.at("x_q"), g.query_offset,
                                               add_positions, args.inputs.at("w_q"), nullptr,
                                               nullptr, options));
  Tensor v({g.batch, g.sk, g.kv_heads * g.dv});
  ATTN_ASSIGN_OR_RETURN(problem.k,
                        ProjectRows(args.inputs.at("x_kv"), 0, add_positions,
                                    args.inputs.at("w_k"), &args.inputs.at("w_v"), v.data(),
                                    options));
  problem.v = std::move(v);
  return problem;
}

RelativeTable::RelativeTable(const float* table, int64_t count, int64_t width)
    : width_(width),
      panels_(static_cast<size_t>(simd::RoundUpToPanel(count) * width), 0.0f) {
  const int64_t whole = count / simd::kPanel * simd::kPanel;
  for (int64_t n = 0; n < whole; n += simd::kPanel) {
    Kernels().transpose_into_panel(table + n * width, width, width, panels_.data() + n * width,
                                    1.0f);
  }
  for (int64_t n = whole; n < count; ++n) {  // The last, partial panel.
    float* panel = panels_.data() + whole * width;
    for (int64_t e = 0; e < width; ++e) {
      panel[e * simd::kPanel + n % simd::kPanel] = table[n * width + e];
    }
  }
}

RelativeTable::Window RelativeTable::WindowOf(int64_t first, int64_t last) const {
  Window w;
  w.base = first / simd::kPanel * simd::kPanel;
  w.ld = simd::RoundUpToPanel(last + 1) - w.base;
  return w;
}

int64_t RelativeTable::MaxLd(int64_t span) { return simd::RoundUpToPanel(span) + simd::kPanel; }

void RelativeTable::Multiply(const Window& w, int64_t rows, const float* a, int64_t lda,
                             float* out, int64_t ldo) const {
  Kernels().gemm(false, rows, w.ld, width_, a, lda, panels_.data() + w.base * width_,
                 width_ * simd::kPanel, out, ldo);
}

void ScaledDotProduct::ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const {
  for (int64_t r = 0; r < tile.rows; ++r) {
    float* row = scores + r * ld;
    for (int64_t c = 0; c < tile.cols; ++c) row[c] *= scale_;
  }
}

}  // namespace attnserve::kernels
