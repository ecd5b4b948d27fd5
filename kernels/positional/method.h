// The interface every positional method implements, and the pieces the
// attention engine hands between them.
//
// A method acts only where it needs to (STYLE.md, "Positional methods"):
//   - on the inputs before the projections (sinusoidal, learned) and on q/k
//     (RoPE): inside PrepareAttend, which returns the per-head q, k, v (for
//     the fast engine RoPE instead turns each row as the engine reads it:
//     ScoreModifier::TurnRows);
//   - on a tile of scores, given the tile's query and key positions (ALiBi,
//     Shaw, Transformer-XL, DA-Transformer): ScoreModifier::ModifyScores;
//   - on the output (Shaw's value term): ScoreModifier::AccumulateValueTerm.
// Like FlexAttention's score_mod, nothing here needs a full [Sq, Sk] matrix,
// so the same method code serves the plain engine (one query row per tile)
// and a tiled one.
//
// Thread-safety: methods are stateless singletons; a ScoreModifier is
// immutable after PrepareAttend and called from many threads at once.
#ifndef ATTNSERVE_KERNELS_POSITIONAL_METHOD_H_
#define ATTNSERVE_KERNELS_POSITIONAL_METHOD_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/attention.h"
#include "kernels/tensor.h"

namespace attnserve::kernels {

// Where row s of head bh = b * H + h lives in a q, k or v buffer of
// `width` columns per head: [B, H, S, width], or with interleaved heads
// [B, S, H * width] (the layout a projection writes).
struct HeadRows {
  const float* data = nullptr;
  int64_t heads = 0, seq = 0, width = 0;
  bool interleaved = false;

  const float* Row(int64_t bh, int64_t s) const {
    return interleaved ? data + (((bh / heads) * seq + s) * heads + bh % heads) * width
                       : data + (bh * seq + s) * width;
  }
  // The distance from row s to row s + 1 of the same head.
  int64_t stride() const { return interleaved ? heads * width : width; }
};

// The keys a query row sees: j in [begin, end) (empty when end <= begin).
struct KeyRange {
  int64_t begin = 0, end = 0;
};

// Attention after the method's input-side work. Positions:
// q_pos(i) = query_offset + i, k_pos(j) = j.
//
// Grouped-query attention (attention-variants.md 1): k and v have kv_heads
// heads (heads % kv_heads == 0) and query head h reads key/value head
// h / (heads / kv_heads); every per-head parameter of a method stays per
// query head. The masks of attention-variants.md 2-3 (kv_lengths, window)
// and the causal mask combine into one key interval per query row
// (VisibleKeys); softcap (5) applies to every final logit.
struct AttentionProblem {
  // [B, H, Sq, D], [B, H_kv, Sk, D], [B, H_kv, Sk, Dv] (positional-methods.md
  // 1.1, attention-variants.md 1), or with heads_interleaved [B, Sq, H*D],
  // [B, Sk, H_kv*D], [B, Sk, H_kv*Dv].
  Tensor q, k, v;
  bool heads_interleaved = false;
  int64_t batch = 0, heads = 0, sq = 0, sk = 0, d = 0, dv = 0;
  int64_t kv_heads = 0;  // 0: heads (ordinary multi-head attention)
  int64_t query_offset = 0;
  bool causal = false;
  double scale = 1.0;
  std::vector<int64_t> kv_lengths;  // empty, or B lengths in 1 .. Sk
  int64_t window = 0;               // 0: none; else W >= 1 (capped at kMaxWindow)
  double softcap = 0;               // 0: none; else c > 0: logit -> c * tanh(logit / c)

  // A window this wide or wider hides nothing a call can hold (positions
  // stay below 2^54), and q_pos + window cannot overflow int64.
  static constexpr int64_t kMaxWindow = int64_t{1} << 60;

  int64_t KvHeads() const { return kv_heads > 0 ? kv_heads : heads; }
  // The key/value head (b * H_kv + h_kv) that query head bh = b * H + h reads.
  int64_t KvHead(int64_t bh) const {
    const int64_t kvh = KvHeads();
    return (bh / heads) * kvh + (bh % heads) / (heads / kvh);
  }
  // Whether any mask beyond the causal one applies.
  bool masks_keys() const { return window > 0 || !kv_lengths.empty(); }

  // The keys query row i of batch element b sees: causal (j <= q_pos),
  // kv_lengths (j < L_b) and window (causal: q_pos - W < j; symmetric:
  // |q_pos - j| < W) combined by AND. 0 <= begin <= end <= Sk, and begin
  // and end never decrease with i (a row that sees nothing gets begin ==
  // end, at most Sk, no less than an earlier row's end).
  KeyRange VisibleKeys(int64_t b, int64_t i) const {
    const int64_t position = query_offset + i;
    KeyRange range{0, kv_lengths.empty() ? sk : kv_lengths[static_cast<size_t>(b)]};
    if (causal) range.end = std::min(range.end, position + 1);
    if (window > 0) {
      range.begin = std::min(sk, std::max<int64_t>(0, position - window + 1));
      if (!causal) range.end = std::min(range.end, position + window);
    }
    range.end = std::max(range.end, range.begin);
    return range;
  }

  HeadRows q_rows() const { return {q.data(), heads, sq, d, heads_interleaved}; }
  // Indexed by key/value head: Row(KvHead(bh), j).
  HeadRows k_rows() const { return {k.data(), KvHeads(), sk, d, heads_interleaved}; }
  HeadRows v_rows() const { return {v.data(), KvHeads(), sk, dv, heads_interleaved}; }
};

// A block of scores of one (batch, head): query rows i0 .. i0+rows-1, key
// columns j0 .. j0+cols-1. scratch: the query block's scratch (see
// ScoreModifier::BeginQueryBlock), or null when the modifier needs none.
struct ScoreTile {
  int64_t b = 0, h = 0;
  int64_t i0 = 0, rows = 0;
  int64_t j0 = 0, cols = 0;
  float* scratch = nullptr;

  // The columns of row r that query i0 + r (at position query_offset +
  // i0 + r) may see under the causal mask alone: a prefix, all of them
  // without causal masking. The key lengths and the window
  // (AttentionProblem::VisibleKeys) hide more: a modifier may compute logits
  // for this whole prefix (the engine masks the rest), and an engine hands
  // AccumulateValueTerm zero weights for every column outside VisibleKeys.
  int64_t VisibleCols(int64_t r, int64_t query_offset, bool causal) const {
    return causal ? std::clamp<int64_t>(query_offset + i0 + r - j0 + 1, 0, cols) : cols;
  }
};

class ScoreModifier {
 public:
  virtual ~ScoreModifier() = default;

  // True when score(i, j) = problem.scale * (q_i . k_j) exactly: the engine
  // may then apply the scale itself (the fast one scales the queries) and
  // never call ModifyScores.
  virtual bool scale_only() const { return false; }

  // True when the method's logit is scale * (q_i . k_j) plus a term of its
  // own that ModifyScores adds (Transformer-XL): the engine then hands
  // ModifyScores the scaled dot products (the fast one scales the queries).
  virtual bool adds_to_scaled_scores() const { return false; }

  // Per-query-block work, e.g. the products of a block's queries with a
  // table over relative positions (Shaw, Transformer-XL): before the tiles of
  // query rows i0 .. i0+rows-1 of (b, h) the engine calls BeginQueryBlock
  // with block = {b, h, i0, rows, 0, Sk, scratch}, scratch holding
  // ScratchFloats(rows) floats private to the calling thread; every tile of
  // that block then carries the same i0, rows and scratch.
  virtual int64_t ScratchFloats(int64_t /*rows*/) const { return 0; }
  virtual void BeginQueryBlock(const ScoreTile& /*block*/) const {}

  // Methods whose logit adds a per-head vector to every query, (q_i + u_h)
  // . k_j (Transformer-XL's content bias), may leave it out of the
  // problem's q and return u_h here (D floats, owned by the modifier): the
  // fast engine adds it as it copies a block's queries (only with query
  // features, where it copies them). Engines that do not (the plain one)
  // are handed a problem whose q holds q + u.
  virtual const float* QueryBias(int64_t /*h*/) const { return nullptr; }

  // Methods whose own term is a dot product of per-query and per-key
  // features,
  //   score(i, j) = scale * (q_i . k_j) + a_i . b_j,
  // (Transformer-XL's position term, by angle addition) return the width w
  // of a and b here (0: none) and give b through KeyFeatures, a through
  // QueryFeatures. The fast engine appends b_j to its packed keys and a_i to
  // its scaled queries, so one product over D + w yields the whole logit; it
  // then calls neither BeginQueryBlock nor ModifyScores, which must still
  // produce the same logits for engines that do (the plain one).
  virtual int64_t feature_width() const { return 0; }
  // b_j of keys 0 .. Sk-1 of (b, h): row j at j * feature_width(), owned by
  // the modifier. Under grouped-query attention the engine packs them once
  // per key/value head (with h the group's first query head), so they must
  // not differ between the query heads of one group.
  virtual const float* KeyFeatures(int64_t /*b*/, int64_t /*h*/) const { return nullptr; }
  // a_i of the block's rows (block as for BeginQueryBlock, its scratch
  // usable) into dst[r * ld + 0 .. feature_width()).
  virtual void QueryFeatures(const ScoreTile& /*block*/, float* /*dst*/, int64_t /*ld*/) const {}

  // Methods that turn q and k by position before the product (RoPE) may
  // leave the problem's q and k as the caller sent them and return true
  // here: the fast engine then passes every row it reads through TurnRows
  // (keys as it packs them, a query block's rows into its own copy), on its
  // own threads, instead of a separate pass over q and k. Engines that do
  // not (the plain one) are handed a problem whose q and k are turned.
  virtual bool turns_rows() const { return false; }
  // dst row r (at dst + r * ldd) = src row r (at src + r * lds) turned as
  // the row at position first_position + r; D floats a row.
  virtual void TurnRows(int64_t /*first_position*/, int64_t /*count*/, const float* /*src*/,
                        int64_t /*lds*/, float* /*dst*/, int64_t /*ldd*/) const {}

  // On entry scores[r * ld + c] holds the raw dot product q_i . k_j (not
  // scaled; scale * q_i . k_j when adds_to_scaled_scores()) for i = i0 + r,
  // j = j0 + c; on return it holds the method's logit score(i, j). Entries
  // of keys the row does not see (AttentionProblem::VisibleKeys) may hold
  // anything, before and after: the engine masks after this call (and then applies the softcap). Each row has room
  // for cols rounded up to 16 (the part past cols may be written).
  virtual void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const = 0;

  // Methods with a term on the values (Shaw's rel_v) return true and add
  // sum_c weights[r * ldw + c] * term(i0 + r, j0 + c)[e] to acc[r * lda + e]
  // for e < Dv. Under causal masking only each row's visible prefix
  // (ScoreTile::VisibleCols) may be read: the weights past it may hold
  // anything. acc rows hold Dv rounded up to 16 floats (lda >= that); the
  // part past Dv may be written.
  virtual bool HasValueTerm() const { return false; }
  virtual void AccumulateValueTerm(const ScoreTile& /*tile*/, const float* /*weights*/,
                                   int64_t /*ldw*/, float* /*acc*/, int64_t /*lda*/) const {}
};

struct PreparedAttention {
  AttentionProblem problem;
  std::unique_ptr<ScoreModifier> modifier;
};

// The engines' output tensor of `shape` ([B,H,Sq,Dv]): in
// options.out_storage when that gives storage, else a new one left
// unfilled (Tensor::Uninitialized): both engines write every row, a row
// that sees no key included.
Tensor AttendOutput(std::vector<int64_t> shape, const ComputeOptions& options);

// Which tensors an op takes; Attend/Encode reject any other before calling
// the method, and a missing required one.
struct InputSpec {
  absl::string_view name;
  bool required = true;
};

class PositionalMethod {
 public:
  virtual ~PositionalMethod() = default;

  virtual MethodKind kind() const = 0;
  virtual absl::string_view description() const = 0;
  // The method's own parameters and tensors (not the common attend ones).
  virtual std::vector<ParameterInfo> parameters() const = 0;

  virtual std::vector<InputSpec> attend_inputs() const = 0;
  // True when PrepareAttend moves q, k and v into the problem with their
  // values unchanged: Attend may then leave their finiteness check to the
  // fast engine, which reads every value anyway.
  virtual bool keeps_qkv_values() const { return false; }
  // Validates every rule of the spec, then builds the per-head problem and
  // the score modifier. May move tensors out of args.
  virtual absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                          const ComputeOptions& options) const = 0;

  // Methods without an encode form keep these defaults (INVALID_ARGUMENT).
  virtual bool has_encode() const { return false; }
  virtual std::vector<InputSpec> encode_inputs() const { return {}; }
  virtual absl::StatusOr<TensorMap> Encode(EncodeArgs& args, const ComputeOptions& options) const;
};

// The explicit registry: an exhaustive switch over MethodKind.
const PositionalMethod& GetMethod(MethodKind kind);

// The singletons, one per file under positional/.
const PositionalMethod& NoneMethod();
const PositionalMethod& SinusoidalMethod();
const PositionalMethod& LearnedMethod();
const PositionalMethod& RopeMethod();
const PositionalMethod& TransformerXlMethod();
const PositionalMethod& ShawMethod();
const PositionalMethod& AlibiMethod();
const PositionalMethod& DaTransformerMethod();

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_POSITIONAL_METHOD_H_
