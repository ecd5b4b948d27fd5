#include "kernels/plain_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "kernels/parallel.h"
#include "kernels/positional/common.h"

namespace attnserve::kernels {

absl::StatusOr<AttendResult> RunPlainAttention(const PreparedAttention& prepared,
                                               bool return_probs,
                                               const ComputeOptions& options) {
  const AttentionProblem& p = prepared.problem;
  const ScoreModifier& modifier = *prepared.modifier;
  AttendResult result;
  result.out = AttendOutput({p.batch, p.heads, p.sq, p.dv}, options);
  // Every probs row is written in full (zeros where the row sees no key).
  if (return_probs) result.probs = Tensor::Uninitialized({p.batch, p.heads, p.sq, p.sk});
  float* probs = return_probs ? result.probs->data() : nullptr;
  float* out = result.out.data();
  const HeadRows q = p.q_rows(), k = p.k_rows(), v = p.v_rows();
  const bool value_term = modifier.HasValueTerm();
  const bool prescale = modifier.adds_to_scaled_scores();
  std::atomic<bool> stopped{false};

  const int64_t rows = p.batch * p.heads * p.sq;
  const double work = static_cast<double>(rows) * static_cast<double>(p.sk) * (p.d + p.dv);
  ParallelFor(rows, ThreadsFor(work, options), 8, [&](int64_t begin, int64_t end) {
    // Room past Sk up to a multiple of 16: ModifyScores may write whole
    // 16-float panels past a tile that starts at the row's first visible key.
    std::vector<float> scores(static_cast<size_t>((p.sk + 15) / 16 * 16 + 16));
    std::vector<float> weights(static_cast<size_t>(p.sk));
    std::vector<double> acc(static_cast<size_t>(p.dv));
    // Rounded up to 16: AccumulateValueTerm may write whole 16-float panels.
    const int64_t term_width = (p.dv + 15) / 16 * 16;
    std::vector<float> term(value_term ? static_cast<size_t>(term_width) : 0);
    std::vector<float> scratch(static_cast<size_t>(modifier.ScratchFloats(1)));
    for (int64_t row = begin; row < end; ++row) {
      if (options.cancelled != nullptr && options.cancelled->load(std::memory_order_relaxed)) {
        stopped.store(true, std::memory_order_relaxed);
        return;
      }
      const int64_t bh = row / p.sq, i = row % p.sq;
      const int64_t b = bh / p.heads, h = bh % p.heads;
      float* out_row = out + row * p.dv;
      float* probs_row = probs != nullptr ? probs + row * p.sk : nullptr;
      // The keys the causal mask (1.3), the key lengths and the window
      // leave: [first, last). A row that sees none gets zeros
      // (attention-variants.md 4).
      const KeyRange keys = p.VisibleKeys(b, i);
      const int64_t first = keys.begin, visible = keys.end - keys.begin;
      if (visible == 0) {
        std::fill(out_row, out_row + p.dv, 0.0f);
        if (probs_row != nullptr) std::fill(probs_row, probs_row + p.sk, 0.0f);
        continue;
      }
      const int64_t kvh = p.KvHead(bh);
      const float* q_row = q.Row(bh, i);
      for (int64_t j = 0; j < visible; ++j) {
        const float* k_row = k.Row(kvh, first + j);
        double dot = 0;
        for (int64_t e = 0; e < p.d; ++e) dot += static_cast<double>(q_row[e]) * k_row[e];
        scores[j] = static_cast<float>(prescale ? p.scale * dot : dot);
      }
      float* const block_scratch = scratch.empty() ? nullptr : scratch.data();
      if (block_scratch != nullptr) modifier.BeginQueryBlock({b, h, i, 1, 0, p.sk, block_scratch});
      const ScoreTile tile{b, h, i, 1, first, visible, block_scratch};
      modifier.ModifyScores(tile, scores.data(), p.sk);
      if (p.softcap > 0) {  // attention-variants.md 5, in double.
        for (int64_t j = 0; j < visible; ++j) {
          scores[j] = static_cast<float>(p.softcap * std::tanh(scores[j] / p.softcap));
        }
      }

      // Max-subtracted softmax (1.5), normalised in double.
      float max_score = scores[0];
      for (int64_t j = 1; j < visible; ++j) max_score = std::max(max_score, scores[j]);
      double sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        sum += std::exp(static_cast<double>(scores[j]) - max_score);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < visible; ++j) {
        const double weight = std::exp(static_cast<double>(scores[j]) - max_score) / sum;
        weights[j] = static_cast<float>(weight);
        const float* v_row = v.Row(kvh, first + j);
        for (int64_t e = 0; e < p.dv; ++e) acc[e] += weight * v_row[e];
      }
      if (value_term) {
        std::fill(term.begin(), term.end(), 0.0f);
        modifier.AccumulateValueTerm(tile, weights.data(), p.sk, term.data(), term_width);
        for (int64_t e = 0; e < p.dv; ++e) acc[e] += term[e];
      }
      for (int64_t e = 0; e < p.dv; ++e) out_row[e] = static_cast<float>(acc[e]);
      if (probs_row != nullptr) {
        std::fill(probs_row, probs_row + first, 0.0f);
        std::copy(weights.begin(), weights.begin() + visible, probs_row + first);
        std::fill(probs_row + first + visible, probs_row + p.sk, 0.0f);
      }
    }
  });
  if (stopped.load()) return absl::CancelledError("the call was cancelled while computing");
  return result;
}

}  // namespace attnserve::kernels
