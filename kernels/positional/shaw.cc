// shaw: relative position representations, clipped at K.
// Shaw, Uszkoreit, Vaswani 2018, "Self-Attention with Relative Position
// Representations", section 3 (eqs. 3-4 with the clipping of 3.2); as the
// public tensor2tensor dot_product_attention_relative: key-minus-query
// distance, one table for keys and one for values shared by all heads.
//   idx(i, j)  = clip(k_pos(j) - q_pos(i), -K, K) + K
//   score(i,j) = scale * q_i . (k_j + rel_k[idx])
//   out(i)     = sum_j p(i, j) * (v_j + rel_v[idx])
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/isa.h"
#include "kernels/simd/panels.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/positional/tables.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

absl::StatusOr<int64_t> ResolveK(const MethodParams& params) {
  if (!params.max_relative_position.has_value()) {
    return absl::InvalidArgumentError("max_relative_position: required (K >= 0), not set");
  }
  const int64_t k = *params.max_relative_position;
  // Above 2^53, 2K+1 (rel_k's rows) and the relative positions are no longer
  // exact, and 2K+1 could overflow int64.
  if (k < 0 || k > kMaxQueryOffset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_relative_position: must be in 0 .. 2^53 = ", kMaxQueryOffset, ", got ", k));
  }
  return k;
}

// table must be [2K+1, width].
absl::Status CheckRelTable(const Tensor& table, absl::string_view name, int64_t k,
                           int64_t width, absl::string_view width_name,
                           absl::string_view width_source) {
  ATTN_RETURN_IF_ERROR(ExpectRank(table, name, 2, absl::StrCat("[2K+1,", width_name, "]")));
  const std::string text = absl::StrCat("[2K+1=", 2 * k + 1, ",", width_name, "=", width,
                                        "] for max_relative_position=", k, " and ",
                                        width_source);
  ATTN_RETURN_IF_ERROR(ExpectDim(table, name, 0, 2 * k + 1, text));
  return ExpectDim(table, name, 1, width, text);
}

// Per query block, q_i . rel_k[t] for the buckets t the block meets (a
// [rows x <= 2K+1] product on the micro-kernel); each tile then gathers from
// it: a run of bucket 0, the diagonal band, a run of bucket 2K. The value
// term adds the probability mass of each bucket times rel_v[t].
// Query rows per group of BeginQueryBlock's and the value term's products:
// each group works over only the relative positions its rows meet.
constexpr int64_t kGroupRows = 6;

class ShawModifier final : public ScoreModifier {
 public:
  ShawModifier(const AttentionProblem& p, int64_t max_relative_position, const Tensor& rel_k,
               Tensor rel_v)
      : q_(p.q_rows()),
        heads_(p.heads),
        sk_(p.sk),
        dv_(p.dv),
        scale_(static_cast<float>(p.scale)),
        query_offset_(p.query_offset),
        causal_(p.causal),
        k_(max_relative_position),
        rel_k_(rel_k.data(), 2 * max_relative_position + 1, p.d),
        rel_v_panels_(static_cast<size_t>((2 * k_ + 1) * simd::RoundUpToPanel(dv_))) {
    Kernels().pack_column_panels(rel_v.data(), dv_, 2 * k_ + 1, dv_, rel_v_panels_.data());
  }

  // [rows x window] for q . rel_k, then [rows x buckets] for a tile's masses.
  int64_t ScratchFloats(int64_t rows) const override {
    const int64_t span = std::min(2 * k_ + 1, rows + sk_ - 1);
    return rows * (RelativeTable::MaxLd(span) + span);
  }

  // Row group by row group (kGroupRows), each over only the
  // buckets its rows meet: at small S most rows of a block meet far fewer
  // than the block's (at S=128, K=64 a group's rows span 70 to 129 of them).
  void BeginQueryBlock(const ScoreTile& block) const override {
    const RelativeTable::Window w = WindowOf(block);
    const float* q = q_.Row(block.b * heads_ + block.h, block.i0);
    for (int64_t r0 = 0; r0 < block.rows; r0 += kGroupRows) {
      const int64_t group = std::min<int64_t>(kGroupRows, block.rows - r0);
      const RelativeTable::Window g = GroupWindow(block, r0, group);
      rel_k_.Multiply(g, group, q + r0 * q_.stride(), q_.stride(),
                      block.scratch + r0 * w.ld + (g.base - w.base), w.ld);
    }
  }

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    const RelativeTable::Window w = WindowOf(tile);
    // scale * (s + q . rel_k[idx]) over each run, on the ISA's vectors.
    const auto add_then_scale_row = Kernels().add_then_scale_row;
    for (int64_t r = 0; r < tile.rows; ++r) {
      // Masked entries may hold anything (the engine masks them), and their
      // buckets were not multiplied: only the visible prefix is touched.
      const int64_t cols = tile.VisibleCols(r, query_offset_, causal_);
      const Runs runs = RunsOf(tile, r, cols);
      const float* qr = tile.scratch + r * w.ld;  // qr[t - base], t in the window
      float* row = scores + r * ld;
      if (runs.band_begin > 0) {
        add_then_scale_row(row, runs.band_begin, nullptr, qr[0 - w.base], scale_);
      }
      if (runs.band_end > runs.band_begin) {
        add_then_scale_row(row + runs.band_begin, runs.band_end - runs.band_begin,
                           qr + (runs.first_band_index - w.base), 0.0f, scale_);
      }
      if (runs.band_end < cols) {
        add_then_scale_row(row + runs.band_end, cols - runs.band_end, nullptr,
                           qr[2 * k_ - w.base], scale_);
      }
    }
  }

  bool HasValueTerm() const override { return true; }

  // The probability mass per bucket t of each row, M [rows x buckets of the
  // tile], then acc += M rel_v[buckets] on the micro-kernel (rel_v packed
  // once); the clipped runs' masses are summed in double.
  void AccumulateValueTerm(const ScoreTile& tile, const float* weights, int64_t ldw, float* acc,
                           int64_t lda) const override {
    const int64_t first = ShawIndex(query_offset_ + tile.i0 + tile.rows - 1, tile.j0, k_);
    const int64_t last = LastBucket(tile, 0);
    const int64_t buckets = last - first + 1;
    float* mass = tile.scratch + tile.rows * WindowOf(tile).ld;
    std::fill_n(mass, tile.rows * buckets, 0.0f);
    for (int64_t r = 0; r < tile.rows; ++r) {
      // Weights are zero past the visible prefix.
      const int64_t cols = tile.VisibleCols(r, query_offset_, causal_);
      const Runs runs = RunsOf(tile, r, cols);
      const float* p = weights + r * ldw;
      float* m = mass + r * buckets;  // m[t - first]
      if (runs.band_begin > 0) {
        m[0 - first] += static_cast<float>(Kernels().sum_in_double(p, runs.band_begin));
      }
      for (int64_t c = runs.band_begin; c < runs.band_end; ++c) {
        m[runs.first_band_index + c - runs.band_begin - first] = p[c];
      }
      if (runs.band_end < cols) {
        m[2 * k_ - first] +=
            static_cast<float>(Kernels().sum_in_double(p + runs.band_end, cols - runs.band_end));
      }
    }
    // acc += M rel_v group by group, each over only the buckets its rows
    // meet with visible keys (the rest of its rows of M are zero).
    const int64_t panels = simd::RoundUpToPanel(dv_) / simd::kPanel;
    for (int64_t r0 = 0; r0 < tile.rows; r0 += kGroupRows) {
      const int64_t group = std::min<int64_t>(kGroupRows, tile.rows - r0);
      // A group whose last row sees no key is wholly masked.
      if (tile.VisibleCols(r0 + group - 1, query_offset_, causal_) == 0) continue;
      const int64_t group_first =
          ShawIndex(query_offset_ + tile.i0 + r0 + group - 1, tile.j0, k_);
      const int64_t group_last = LastBucket(tile, r0);
      // Every panel of rel_v in one call: panel t of the window at
      // rel_v_panels_ + (t * (2K + 1) + group_first) * 16.
      Kernels().gemm(true, group, panels * simd::kPanel, group_last - group_first + 1,
                     mass + r0 * buckets + (group_first - first), buckets,
                     rel_v_panels_.data() + group_first * simd::kPanel,
                     (2 * k_ + 1) * simd::kPanel, acc + r0 * lda, lda);
    }
  }

 private:
  // Columns [0, band_begin) of a tile row use bucket 0, [band_begin,
  // band_end) buckets first_band_index + (c - band_begin), the rest (up to
  // cols) 2K.
  struct Runs {
    int64_t band_begin = 0, band_end = 0, first_band_index = 0;
  };
  Runs RunsOf(const ScoreTile& tile, int64_t r, int64_t cols) const {
    const int64_t u0 = tile.j0 - (query_offset_ + tile.i0 + r);  // k_pos - q_pos at c = 0
    Runs runs;
    runs.band_begin = std::clamp<int64_t>(1 - k_ - u0, 0, cols);
    runs.band_end = std::clamp<int64_t>(k_ - u0, runs.band_begin, cols);
    runs.first_band_index = u0 + runs.band_begin + k_;
    return runs;
  }

  // The last bucket rows r0 .. r0 + rows - 1 of the tile meet with their
  // visible keys: their first row's, at the last key that row sees (under
  // causal masking its own position at most, so no bucket past K).
  int64_t LastBucket(const ScoreTile& tile, int64_t r0) const {
    const int64_t first_position = query_offset_ + tile.i0 + r0;
    int64_t last_key = tile.j0 + tile.cols - 1;
    if (causal_) last_key = std::min(last_key, first_position);
    return ShawIndex(first_position, last_key, k_);
  }

  // The buckets the block's rows meet with its visible keys.
  RelativeTable::Window WindowOf(const ScoreTile& block) const {
    return GroupWindow(block, 0, block.rows);
  }

  // The buckets rows r0 .. r0 + rows - 1 of the block meet with the keys
  // they see (ModifyScores and the value term read only those).
  RelativeTable::Window GroupWindow(const ScoreTile& block, int64_t r0, int64_t rows) const {
    const int64_t last_position = query_offset_ + block.i0 + r0 + rows - 1;
    const ScoreTile all_keys{block.b, block.h, block.i0, block.rows, 0, sk_, nullptr};
    return rel_k_.WindowOf(ShawIndex(last_position, 0, k_), LastBucket(all_keys, r0));
  }

  const HeadRows q_;  // Owned by the problem, which outlives the modifier's use.
  const int64_t heads_, sk_, dv_;
  const float scale_;
  const int64_t query_offset_;
  const bool causal_;
  const int64_t k_;
  const RelativeTable rel_k_;
  std::vector<float> rel_v_panels_;  // rel_v [2K+1 x Dv] as Gemm panels
};

class Shaw final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kShaw; }
  absl::string_view description() const override {
    return "Relative position representations clipped at K, one key and one value table shared "
           "by all heads (Shaw et al. 2018).";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"max_relative_position", "int", "", "K >= 0; required", {"encode", "attend"}},
            {"rel_k", "tensor", "", "[2K+1,D]", {"encode", "attend"}},
            {"rel_v", "tensor", "", "[2K+1,Dv]", {"attend"}},
            {"sq", "int", "", ">= 1", {"encode"}},
            {"sk", "int", "", ">= 1", {"encode"}},
            {"query_offset", "int", "sk - sq", ">= 0", {"encode"}},
            {"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  bool keeps_qkv_values() const override { return true; }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"q"}, {"k"}, {"v"}, {"rel_k"}, {"rel_v"}};
  }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const int64_t k, ResolveK(args.params));
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    const AttentionProblem& p = prepared.problem;
    Tensor& rel_k = args.inputs.at("rel_k");
    Tensor& rel_v = args.inputs.at("rel_v");
    ATTN_RETURN_IF_ERROR(CheckRelTable(rel_k, "rel_k", k, p.d, "D", "q"));
    ATTN_RETURN_IF_ERROR(CheckRelTable(rel_v, "rel_v", k, p.dv, "Dv", "v"));
    prepared.modifier = std::make_unique<ShawModifier>(p, k, rel_k, std::move(rel_v));
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"rel_k"}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const int64_t k, ResolveK(args.params));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sq, "sq"));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sk, "sk"));
    ATTN_ASSIGN_OR_RETURN(const int64_t offset,
                          ResolveQueryOffset(args.query_offset, args.sq, args.sk));
    const Tensor& rel_k = args.inputs.at("rel_k");
    ATTN_RETURN_IF_ERROR(ExpectRank(rel_k, "rel_k", 2, "[2K+1,D]"));
    ATTN_RETURN_IF_ERROR(ExpectDim(
        rel_k, "rel_k", 0, 2 * k + 1,
        absl::StrCat("[2K+1=", 2 * k + 1, ",D] for max_relative_position=", k)));
    const int64_t sq = args.sq, sk = args.sk, d = rel_k.dim(1);
    ATTN_RETURN_IF_ERROR(
        CheckResultSize({{"rel_index", {sq, sk}}, {"rel_k_gathered", {sq, sk, d}}}, options));
    Tensor index({sq, sk});
    Tensor gathered({sq, sk, d});
    for (int64_t i = 0; i < sq; ++i) {
      ATTN_RETURN_IF_ERROR(CheckCancelled(options));
      for (int64_t j = 0; j < sk; ++j) {
        const int64_t idx = ShawIndex(offset + i, j, k);
        index.data()[i * sk + j] = static_cast<float>(idx);
        std::copy_n(rel_k.data() + idx * d, d, gathered.data() + (i * sk + j) * d);
      }
    }
    TensorMap outputs;
    outputs["rel_index"] = std::move(index);
    outputs["rel_k_gathered"] = std::move(gathered);
    return outputs;
  }
};

}  // namespace

const PositionalMethod& ShawMethod() {
  static const Shaw* const method = new Shaw();
  return *method;
}

}  // namespace attnserve::kernels
