#include "kernels/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/isa.h"
#include "kernels/parallel.h"
#include "kernels/positional/common.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

// Keys per block: a block of K (64 x D floats) stays in L1 while every query
// row of the group reads it, and so does its block of V.
constexpr int64_t kKeyBlock = 64;
// Query rows (group heads x new rows) per pass over a chunk's keys.
constexpr int64_t kRowBlock = 16;
// The fewest keys worth a chunk of their own (a thread's share of a split).
constexpr int64_t kMinChunkKeys = 512;

// q . k over d floats, in eight independent float sums (which the compiler
// vectorises for the baseline ISA; one running sum could not be reordered).
inline float Dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= d; e += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[e + l] * b[e + l];
  }
  float tail = 0;
  for (; e < d; ++e) tail += a[e] * b[e];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// One query row of a task: query head h, new row i at position pos, seeing
// keys lo .. pos.
struct Row {
  int64_t h = 0, pos = 0, lo = 0;
  float slope = 0;
  const float* q = nullptr;
  const float* a = nullptr;  // Transformer-XL's query features
};

class Logits {
 public:
  explicit Logits(const DecodeAttention& p)
      : scale_(p.scale),
        alibi_(p.slopes != nullptr),
        rhat_(p.rhat),
        rhat_ld_(p.length),
        softcap_(p.softcap.has_value()),
        cap_(static_cast<float>(p.softcap.value_or(1.0))),
        inv_cap_(static_cast<float>(1.0 / p.softcap.value_or(1.0))) {}

  // The final pre-softmax value of key j for `row` from its dot product.
  float operator()(float dot, const Row& row, int64_t j) const {
    float l = scale_ * dot;
    if (alibi_) l -= row.slope * static_cast<float>(row.pos - j);
    // A non-positive dot product scores exactly 0, whatever Rhat is.
    if (rhat_ != nullptr) l = dot > 0 ? dot * rhat_[row.h * rhat_ld_ + row.pos - j] * scale_ : 0;
    if (softcap_) l = cap_ * std::tanh(l * inv_cap_);
    return l;
  }

 private:
  const float scale_;
  const bool alibi_;
  const float* const rhat_;
  const int64_t rhat_ld_;
  const bool softcap_;
  const float cap_, inv_cap_;
};

Row MakeRow(const DecodeAttention& p, int64_t b, int64_t h, int64_t i) {
  Row row;
  row.h = h;
  row.pos = p.length - p.n + i;
  row.lo = p.window.has_value() ? std::max<int64_t>(0, row.pos - *p.window + 1) : 0;
  row.slope = p.slopes != nullptr ? static_cast<float>(p.slopes[h]) : 0.0f;
  row.q = p.q + ((b * p.heads + h) * p.n + i) * p.d;
  if (p.features != nullptr) row.a = p.features + ((b * p.heads + h) * p.n + i) * p.width;
  return row;
}

// Shaw's bucket of key j for `row`: causal, so j - p <= 0.
inline int64_t ShawRow(const DecodeAttention& p, const Row& row, int64_t j) {
  return std::max(j - row.pos, -p.max_relative) + p.max_relative;
}

// What key j's logit adds to q . k_j: q . rel_k[bucket] for Shaw, a . c_j
// for Transformer-XL.
inline float ExtraDot(const DecodeAttention& p, const Row& row, int64_t j) {
  float dot = 0;
  if (p.rel_k != nullptr) dot += Dot(row.q, p.rel_k + ShawRow(p, row, j) * p.d, p.d);
  if (row.a != nullptr) dot += Dot(row.a, p.key_features + j * p.width, p.width);
  return dot;
}

// q . k_j, plus ExtraDot.
inline float KeyDot(const DecodeAttention& p, const Row& row, const float* k, int64_t j) {
  return Dot(row.q, k + j * p.d, p.d) + ExtraDot(p, row, j);
}

// acc += w * v_j (+ w * rel_v[bucket] for Shaw).
inline void AddValue(const DecodeAttention& p, const Row& row, const float* v, int64_t j, float w,
                     float* acc) {
  const float* vj = v + j * p.dv;
  for (int64_t e = 0; e < p.dv; ++e) acc[e] += w * vj[e];
  if (p.rel_v != nullptr) {
    const float* rj = p.rel_v + ShawRow(p, row, j) * p.dv;
    for (int64_t e = 0; e < p.dv; ++e) acc[e] += w * rj[e];
  }
}

// With probs: each row on its own, two passes over its visible keys (the
// logits go straight into its probs row), exact normalisation.
absl::Status RunWithProbs(const DecodeAttention& p, const ComputeOptions& options) {
  const int64_t rows = p.batch * p.heads * p.n, group = p.heads / p.kv_heads;
  const Logits logit(p);
  ParallelFor(rows, options.threads, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (IsCancelled(options)) return;
      const int64_t b = r / (p.heads * p.n), h = (r / p.n) % p.heads, i = r % p.n;
      const Row row = MakeRow(p, b, h, i);
      const int64_t kv = b * p.kv_heads + h / group;
      const float* k = p.k + kv * p.max_len * p.d;
      const float* v = p.v + kv * p.max_len * p.dv;
      float* probs = p.probs + r * p.length;
      float* out = p.out + r * p.dv;
      std::fill_n(probs, p.length, 0.0f);
      std::fill_n(out, p.dv, 0.0f);
      float max = -std::numeric_limits<float>::infinity();
      for (int64_t j = row.lo; j <= row.pos; ++j) {
        probs[j] = logit(KeyDot(p, row, k, j), row, j);
        max = std::max(max, probs[j]);
      }
      double sum = 0;
      for (int64_t j = row.lo; j <= row.pos; ++j) {
        probs[j] = std::exp(probs[j] - max);
        sum += probs[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = row.lo; j <= row.pos; ++j) {
        probs[j] *= inv;
        const float w = probs[j];
        AddValue(p, row, v, j, w, out);
      }
    }
  });
  return CheckCancelled(options);
}

// CANCELLED once `p`'s caller, or the whole call's, stopped waiting.
absl::Status CheckStopped(const DecodeAttention& p, const ComputeOptions& options) {
  ATTN_RETURN_IF_ERROR(CheckCancelled(options));
  ComputeOptions own;
  own.cancelled = p.cancelled;
  return CheckCancelled(own);
}

// One problem's share of a pass: its tasks (key/value head x key chunk) are
// [task0, task0 + tasks) of the pass, its partial softmaxes at `partial`.
struct Plan {
  const DecodeAttention* p = nullptr;
  int64_t group = 0;      // query heads per key/value head
  int64_t rows = 0;       // query rows per key/value head
  int64_t heads = 0;      // key/value heads, B * H_kv
  int64_t first_key = 0;  // keys before it no row sees (the window)
  int64_t chunks = 1, chunk_keys = 0;
  int64_t task0 = 0, tasks = 0;
  int64_t stride = 0;  // per task and row: the running max, the sum and Dv weighted values
  float* partial = nullptr;
};

// The plan of `p` when the pass has `all_heads` key/value heads in total:
// split-K only as far as the threads need work, about two tasks a thread.
Plan MakePlan(const DecodeAttention& p, int64_t all_heads, int threads) {
  Plan plan;
  plan.p = &p;
  plan.group = p.heads / p.kv_heads;
  plan.rows = plan.group * p.n;
  plan.heads = p.batch * p.kv_heads;
  // Keys no row sees (before the window of the first new row) are skipped.
  plan.first_key = p.window.has_value() ? std::max<int64_t>(0, p.length - p.n - *p.window + 1) : 0;
  const int64_t keys = p.length - plan.first_key;
  if (threads > 1) {
    const int64_t wanted = (2 * threads + all_heads - 1) / all_heads;
    plan.chunks = std::clamp<int64_t>(keys / kMinChunkKeys, 1, wanted);
  }
  plan.chunk_keys = (keys + plan.chunks - 1) / plan.chunks;
  plan.tasks = plan.heads * plan.chunks;
  plan.stride = p.dv + 2;
  return plan;
}

// Task `task` of `plan` (one key/value head's chunk of keys, every query row
// of its group): its rows' partial softmaxes. `block_rows` and `scores` are
// the thread's scratch (kRowBlock rows, kRowBlock * kKeyBlock scores).
void RunTask(const Plan& plan, int64_t task, std::vector<Row>& block_rows,
             std::vector<float>& scores) {
  const DecodeAttention& p = *plan.p;
  const Logits logit(p);
  const bool extra = p.rel_k != nullptr || p.features != nullptr;
  const IsaKernels& isa = Kernels();
  const int64_t kv = task / plan.chunks, chunk = task % plan.chunks;
  const int64_t b = kv / p.kv_heads, g = kv % p.kv_heads;
  const int64_t c0 = plan.first_key + chunk * plan.chunk_keys;
  const int64_t c1 = std::min(p.length, c0 + plan.chunk_keys);
  const float* k = p.k + kv * p.max_len * p.d;
  const float* v = p.v + kv * p.max_len * p.dv;
  const int64_t rows = plan.rows, stride = plan.stride;
  float* part = plan.partial + task * rows * stride;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int64_t count = std::min(kRowBlock, rows - r0);
    for (int64_t r = 0; r < count; ++r) {
      const int64_t row = r0 + r;
      block_rows[r] = MakeRow(p, b, g * plan.group + row / p.n, row % p.n);
      float* state = part + row * stride;
      state[0] = -std::numeric_limits<float>::infinity();
      std::fill_n(state + 1, p.dv + 1, 0.0f);
    }
    for (int64_t j0 = c0; j0 < c1; j0 += kKeyBlock) {
      const int64_t j1 = std::min(c1, j0 + kKeyBlock);
      for (int64_t r = 0; r < count; ++r) {
        const Row& row = block_rows[r];
        const int64_t lo = std::max(row.lo, j0), hi = std::min(row.pos + 1, j1);
        if (lo >= hi) continue;
        // s[t] is key lo + t's logit, then its weight.
        float* s = scores.data() + r * kKeyBlock;
        const int64_t keys_seen = hi - lo;
        isa.decode_dot_rows(row.q, k + lo * p.d, p.d, keys_seen, s);
        float block_max = -std::numeric_limits<float>::infinity();
        bool finite = true;
        for (int64_t t = 0; t < keys_seen; ++t) {
          const float dot = extra ? s[t] + ExtraDot(p, row, lo + t) : s[t];
          s[t] = logit(dot, row, lo + t);
          block_max = std::max(block_max, s[t]);
          finite = finite && std::isfinite(s[t]);
        }
        float* state = part + (r0 + r) * stride;
        float* acc = state + 2;
        if (!finite) {
          // The inputs are finite, so the scores overflowed float32: a NaN sum
          // makes Merge give the row a NaN out, and the step fails with the
          // overflow error (the vectorised exp would turn NaN into 0).
          state[1] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        // The online softmax: rescale what was summed when the max grows.
        if (block_max > state[0]) {
          const float rescale = std::exp(state[0] - block_max);
          state[1] *= rescale;
          for (int64_t e = 0; e < p.dv; ++e) acc[e] *= rescale;
          state[0] = block_max;
        }
        state[1] += isa.decode_exp_accumulate(s, keys_seen, state[0], v + lo * p.dv, p.dv, acc);
        if (p.rel_v != nullptr) {
          for (int64_t t = 0; t < keys_seen; ++t) {
            const float* rt = p.rel_v + ShawRow(p, row, lo + t) * p.dv;
            for (int64_t e = 0; e < p.dv; ++e) acc[e] += s[t] * rt[e];
          }
        }
      }
    }
  }
}

// The merge of `plan`'s chunks' partial softmaxes into its out, row by row.
void Merge(const Plan& plan) {
  const DecodeAttention& p = *plan.p;
  const int64_t rows = plan.rows, stride = plan.stride, chunks = plan.chunks;
  for (int64_t kv = 0; kv < plan.heads; ++kv) {
    const int64_t b = kv / p.kv_heads, g = kv % p.kv_heads;
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t h = g * plan.group + row / p.n, i = row % p.n;
      float* out = p.out + ((b * p.heads + h) * p.n + i) * p.dv;
      float max = -std::numeric_limits<float>::infinity();
      bool overflowed = false;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* state = plan.partial + ((kv * chunks + c) * rows + row) * stride;
        if (state[1] > 0) max = std::max(max, state[0]);
        // An infinite logit makes its chunk's sum NaN: the row has no
        // softmax, and its out must say so (NaN) rather than drop the chunk.
        overflowed = overflowed || std::isnan(state[1]);
      }
      if (overflowed) {
        std::fill_n(out, p.dv, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      std::fill_n(out, p.dv, 0.0f);
      double sum = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* state = plan.partial + ((kv * chunks + c) * rows + row) * stride;
        if (!(state[1] > 0)) continue;
        const float w = std::exp(state[0] - max);
        sum += static_cast<double>(w) * state[1];
        for (int64_t e = 0; e < p.dv; ++e) out[e] += w * state[2 + e];
      }
      // A row always sees its own key (causal, W >= 1), so sum > 0.
      const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
      for (int64_t e = 0; e < p.dv; ++e) out[e] *= inv;
    }
  }
}

}  // namespace

absl::Status RunDecodeAttention(const DecodeAttention& p, const ComputeOptions& options) {
  const DecodeAttention* problems[] = {&p};
  return RunDecodeAttentionBatch(problems, options).front();
}

std::vector<absl::Status> RunDecodeAttentionBatch(absl::Span<const DecodeAttention* const> problems,
                                                  const ComputeOptions& options) {
  std::vector<absl::Status> statuses(problems.size());
  // The problems without probs share the pass.
  std::vector<Plan> plans;
  int64_t all_heads = 0;
  for (const DecodeAttention* p : problems) {
    if (p->probs == nullptr) all_heads += p->batch * p->kv_heads;
  }
  int64_t tasks = 0, floats = 0;
  for (const DecodeAttention* p : problems) {
    if (p->probs != nullptr) continue;
    Plan plan = MakePlan(*p, all_heads, options.threads);
    plan.task0 = tasks;
    tasks += plan.tasks;
    floats += plan.tasks * plan.rows * plan.stride;
    plans.push_back(plan);
  }
  std::vector<float> partial(static_cast<size_t>(floats));
  for (size_t i = 0, offset = 0; i < plans.size(); ++i) {
    plans[i].partial = partial.data() + offset;
    offset += static_cast<size_t>(plans[i].tasks * plans[i].rows * plans[i].stride);
  }
  ParallelFor(tasks, options.threads, 1, [&](int64_t begin, int64_t end) {
    std::vector<Row> block_rows(kRowBlock);
    std::vector<float> scores(static_cast<size_t>(kRowBlock * kKeyBlock));
    // The plan of task `begin`: the last one starting at or before it.
    size_t at = static_cast<size_t>(
        std::upper_bound(plans.begin(), plans.end(), begin,
                         [](int64_t task, const Plan& plan) { return task < plan.task0; }) -
        plans.begin() - 1);
    for (int64_t task = begin; task < end; ++task) {
      while (task >= plans[at].task0 + plans[at].tasks) ++at;
      if (!CheckStopped(*plans[at].p, options).ok()) continue;
      RunTask(plans[at], task - plans[at].task0, block_rows, scores);
    }
  });
  for (size_t i = 0, next = 0; i < problems.size(); ++i) {
    const DecodeAttention& p = *problems[i];
    if (p.probs != nullptr) {
      statuses[i] = CheckStopped(p, options);
      if (statuses[i].ok()) statuses[i] = RunWithProbs(p, options);
      if (statuses[i].ok()) statuses[i] = CheckStopped(p, options);
      continue;
    }
    const Plan& plan = plans[next++];
    statuses[i] = CheckStopped(p, options);
    if (statuses[i].ok()) Merge(plan);
  }
  return statuses;
}

}  // namespace attnserve::kernels
