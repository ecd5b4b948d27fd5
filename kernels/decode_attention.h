// The decode kernel: the attention of a few new query rows per head against a
// long key/value cache, for the logits that are a scaled dot product plus at
// most a per-head linear distance bias (none, RoPE on rotated rows, the
// absolute methods after projection, ALiBi) or times a per-head distance
// coefficient (DA-Transformer), with grouped-query heads, a
// causal sliding window and logit soft-capping (attention-variants.md 1-5).
//
// A decode step (one query row per head, thousands of cached keys) does
// about one multiply-add per cached value read: it is bound by memory, not
// by compute, so the tiled engine (fast_attention.h), which packs every key
// and value of a head per call, is the wrong shape for it. This kernel
// reads each cached key and value once per group of query heads that share
// it (GQA: the H / H_kv query heads of a key/value head, every new row of
// each, read the key while it is in L1), and splits long caches into chunks
// computed on different threads, each keeping a partial softmax (running
// max, sum and weighted values), merged at the end (Dao et al. 2023,
// "Flash-Decoding for long-context inference": split-K). The cache is read
// where it lives; nothing is copied.
//
// RunDecodeAttentionBatch runs the steps of several sessions (one problem
// each, every one with its own cache, length, method terms and
// cancellation) as one parallel pass over (problem x key/value head x key
// chunk) tasks: one team of threads woken once instead of once per step,
// and the tasks of short problems fill the threads beside long ones.
//
// Thread-safety: reentrant; a call shares no state with another.
#ifndef ATTNSERVE_KERNELS_DECODE_ATTENTION_H_
#define ATTNSERVE_KERNELS_DECODE_ATTENTION_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/attention.h"

namespace attnserve::kernels {

struct DecodeAttention {
  // The new rows' queries, [B, H, n, D], already turned or projected.
  const float* q = nullptr;
  // The cache, [B, H_kv, max_len, D] and [B, H_kv, max_len, Dv]; rows
  // 0 .. length - 1 of each head are valid (the new rows included).
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t batch = 0, heads = 0, kv_heads = 0, n = 0, d = 0, dv = 0, max_len = 0;
  // Tokens cached after the step (the new ones included): query row i sits
  // at position length - n + i and sees keys up to it (causal).
  int64_t length = 0;
  float scale = 1;
  // ALiBi: H slopes m_h, the logit gets -m_h * (p - j); null: none.
  const double* slopes = nullptr;
  // DA-Transformer: Rhat_h at distance p - j is rhat[h * length + p - j];
  // the logit is max(0, q.k) * Rhat * scale. Null: none.
  const float* rhat = nullptr;
  // Shaw: rel_k [2K+1, D] and rel_v [2K+1, Dv] with K = max_relative;
  // key j of a row at p uses row t = max(j - p, -K) + K of each: the logit
  // is scale * q.(k_j + rel_k[t]), the values v_j + rel_v[t]. Null: none.
  const float* rel_k = nullptr;
  const float* rel_v = nullptr;
  int64_t max_relative = 0;
  // Transformer-XL's position term, split by angle addition into features:
  // query row (b, h, i) has a_i at features + ((b*H + h)*n + i) * width, key
  // j has c_j at key_features + j * width; the logit gains scale * a_i.c_j
  // (q already holds q + u_h). Null: none.
  const float* features = nullptr;
  const float* key_features = nullptr;
  int64_t width = 0;
  std::optional<int64_t> window;  // W >= 1: keys p - W < j <= p
  std::optional<double> softcap;  // c > 0: logit -> c * tanh(logit / c)
  // Outputs: out [B, H, n, Dv]; probs [B, H, n, length] or null.
  float* out = nullptr;
  float* probs = nullptr;
  // This problem's own caller stops waiting (polled with
  // ComputeOptions::cancelled); null: never.
  const std::atomic<bool>* cancelled = nullptr;
};

// Fills problem.out (and problem.probs when set). CANCELLED when
// options.cancelled becomes true (polled between chunks). The shapes are the
// caller's (kernels/decode.cc checks them).
absl::Status RunDecodeAttention(const DecodeAttention& problem, const ComputeOptions& options);

// Fills every problem's out (and probs), as RunDecodeAttention would one by
// one, in one parallel pass over all their tasks (problems with probs run
// after it, one by one). Returns each problem's status in order: CANCELLED
// for one whose own flag or options.cancelled became true (its out is then
// undefined), else OK. A key/value head is split into chunks only while the
// whole batch has fewer than two tasks a thread; with one thread nothing is
// split, so each output is RunDecodeAttention's bit for bit (with more,
// the chunks, and so the rounding, may differ).
std::vector<absl::Status> RunDecodeAttentionBatch(absl::Span<const DecodeAttention* const> problems,
                                                  const ComputeOptions& options);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_DECODE_ATTENTION_H_
