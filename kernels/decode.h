// DecodeSession: one decode session's key/value cache and its steps
// (decode-sessions.md 2), for every positional method.
//
// The cache is allocated once, at Open, for max_len tokens: keys
// [B, H_kv, max_len, D] and values [B, H_kv, max_len, Dv]; a step writes its
// new keys and values into the next rows and never reallocates. A step of n
// new tokens after t cached ones is exactly Attend with causal = true,
// query_offset = t over the cached keys and values followed by the new ones,
// under the session's method, scale, window and softcap. What the cache
// holds and how a step runs, by method:
//   none, alibi        the keys and values as sent; the decode kernel
//                      (decode_attention.h) reads the cache in place
//   rope               the keys turned at their own positions (once, as
//                      they arrive: the queries are turned at t .. t+n-1);
//                      then as none
//   sinusoidal,        the projected keys and values of (x + P) @ w_k, w_v;
//   learned            the queries projected likewise; then as none
//   da_transformer     the keys and values as sent; the decode kernel
//                      scales each logit by Rhat_h at its distance
//   shaw               the keys and values as sent; the decode kernel adds
//                      q.rel_k[bucket] to each logit, rel_v[bucket] to each value
//   transformer_xl     the keys and values as sent, and each position's
//                      features [cos(j f) | sin(j f)] (computed at open); the
//                      decode kernel reads (q + u) . k_j + a_i . c_j, the
//                      position term split by angle addition
// A step of more than 16 new tokens (a prefill chunk: compute-bound) runs
// the kernels' tiled Attend over a copy of the cached rows for every method
// (rope and the absolute methods as none on their turned or projected rows).
// DecodeSession::StepBatch runs the steps of several sessions together:
// those the decode kernel runs in place share one parallel pass
// (RunDecodeAttentionBatch), each reading its own cache where it is.
//
// Thread-safety: a session is used by one caller at a time (a Decode stream
// keeps one message in flight; a batch holds distinct sessions); distinct
// sessions share nothing.
#ifndef ATTNSERVE_KERNELS_DECODE_H_
#define ATTNSERVE_KERNELS_DECODE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/attention.h"
#include "kernels/decode_attention.h"
#include "kernels/tensor.h"

namespace attnserve::kernels {

// A session's fixed parameters: DecodeOpen's fields.
struct DecodeOptions {
  MethodKind method = MethodKind::kNone;
  MethodParams params;
  // The method's tensors (table, rel_k, slopes, ...) and, for sinusoidal and
  // learned, w_q [d_model, H*D], w_k [d_model, H_kv*D], w_v [d_model, H_kv*Dv].
  TensorMap tensors;
  int64_t batch = 0;         // B >= 1
  int64_t num_heads = 0;     // H >= 1
  int64_t num_kv_heads = 0;  // 0: H; else H % H_kv == 0
  int64_t head_dim = 0;      // D >= 1
  int64_t value_dim = 0;     // 0: D
  int64_t max_len = 0;       // >= 1
  std::optional<double> scale;
  std::optional<int64_t> window;
  std::optional<double> softcap;
  // The most floats one tensor of a one-token step may hold (q, out, and for
  // the absolute methods x and the projections): attnd sets --max_elements.
  // ValidateDecodeOpen checks the open against it before it allocates.
  int64_t max_step_elements = int64_t{1} << 28;
};

// Checks every rule of an open (messages name the DecodeOpen field:
// batch, num_heads, num_kv_heads, head_dim, value_dim, max_len, window,
// softcap, scaling, w_q, ...; the method's own parameters and tensors are
// checked by a one-token Attend, so they get Attend's messages), resolves
// num_kv_heads and value_dim in place, and returns the cache's size in
// bytes, max_len * B * H_kv * (D + Dv) * 4 (transformer_xl: plus its key
// features, max_len * d_rel * 4). INVALID_ARGUMENT for a rule,
// OUT_OF_RANGE naming max_len for a learned table shorter than max_len,
// RESOURCE_EXHAUSTED when the size overflows int64 or a one-token step's
// tensor would hold more than max_step_elements floats.
absl::StatusOr<int64_t> ValidateDecodeOpen(DecodeOptions& options);

class DecodeSession;

// One step of a batch (DecodeSession::StepBatch): what Step takes, and its
// answer.
struct SessionStep {
  DecodeSession* session = nullptr;  // not owned; distinct in a batch
  TensorMap inputs;
  bool return_probs = false;
  // This step's own caller stops waiting; null: never (the batch's
  // ComputeOptions::cancelled stops every step).
  const std::atomic<bool>* cancelled = nullptr;
  // Step's result or error, set by StepBatch.
  absl::StatusOr<AttendResult> result = absl::UnknownError("step: not run");
};

class DecodeSession {
 public:
  // Allocates the cache of `options`, which ValidateDecodeOpen has accepted
  // (and resolved). RESOURCE_EXHAUSTED when the allocation fails.
  static absl::StatusOr<std::unique_ptr<DecodeSession>> Open(DecodeOptions options);

  // Tokens cached.
  int64_t length() const { return length_; }
  int64_t max_len() const { return options_.max_len; }
  // The bytes of the cache (what ValidateDecodeOpen returned).
  int64_t cache_bytes() const { return cache_bytes_; }
  const DecodeOptions& options() const { return options_; }

  // Whether a step of n new tokens runs in place on the decode kernel (every
  // method, n <= 16), which StepBatch runs in one pass with others; else it
  // runs the tiled engine alone.
  bool RunsInPlace(int64_t n) const;

  // Keeps the first `length` tokens. INVALID_ARGUMENT naming truncate.length
  // unless 0 <= length <= length().
  absl::Status Truncate(int64_t length);

  // One step: `inputs` holds q [B,H,n,D], k [B,H_kv,n,D], v [B,H_kv,n,Dv]
  // (x [B,n,d_model] for sinusoidal and learned). Returns out [B,H,n,Dv] and,
  // with return_probs, probs [B,H,n,length() after the step]; the new keys
  // and values are cached. Errors (nothing is cached then):
  // INVALID_ARGUMENT naming the tensor (names, shapes; non-finite values
  // unless options.inputs_checked), OUT_OF_RANGE naming max_len when
  // length() + n > max_len, RESOURCE_EXHAUSTED for a result above the
  // options' limits; CANCELLED.
  absl::StatusOr<AttendResult> Step(TensorMap inputs, bool return_probs,
                                    const ComputeOptions& options);

  // Steps of distinct sessions, each exactly as its session's Step (its own
  // result or error in steps[i].result; a failed or cancelled step caches
  // nothing and leaves the others alone). The steps the decode kernel runs
  // in place (n <= 16 new tokens) share one parallel pass over all their
  // caches with options.threads threads; the others (prefill chunks) run
  // one after another. With one thread every output is bit for bit that of
  // Step (RunDecodeAttentionBatch).
  static void StepBatch(absl::Span<SessionStep> steps, const ComputeOptions& options);

 private:
  DecodeSession(DecodeOptions options, int64_t cache_bytes);

  // A step in place between its preparation and its end: the decode
  // kernel's problem and the buffers it points into.
  struct InPlace {
    DecodeAttention problem;
    Tensor q;
    std::vector<float> rhat, features;
    AttendResult result;
    int64_t before = 0;  // length_ before the step
  };

  // Writes rows [B, H_kv, n, width] of `rows` into `cache` at row length_.
  void Append(const float* rows, int64_t n, int64_t width, float* cache) const;
  // Checks a step's inputs and writes its new rows into the cache (turned
  // or projected) past length_; *q gets its queries, *n its token count.
  absl::Status Begin(TensorMap& inputs, bool return_probs, const ComputeOptions& options,
                     Tensor* q, int64_t* n);
  // The kernel's problem of a step in place; length_ counts the new tokens
  // from here until EndInPlace.
  absl::StatusOr<std::unique_ptr<InPlace>> PrepareInPlace(Tensor q, int64_t n, bool return_probs);
  // The step's answer after its kernel returned `status`: on any failure
  // (or an output that is not finite) length_ goes back.
  absl::StatusOr<AttendResult> EndInPlace(InPlace& step, const absl::Status& status);
  absl::StatusOr<AttendResult> StepByAttend(Tensor q, int64_t n, bool return_probs,
                                            const ComputeOptions& options);

  const DecodeOptions options_;
  const int64_t cache_bytes_;
  int64_t kv_heads_ = 0, d_ = 0, dv_ = 0;
  std::unique_ptr<float[]> k_, v_;  // [B, H_kv, max_len, D], [.., Dv]
  std::vector<double> slopes_;      // ALiBi's, per query head
  // Transformer-XL: its frequencies f_m and the key features
  // [cos(j f_m) | sin(j f_m)] of positions 0 .. max_len-1 (max_len * d_rel
  // floats beside the cache).
  std::vector<double> txl_frequencies_;
  std::vector<float> txl_keys_;
  int64_t length_ = 0;
};

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_DECODE_H_
