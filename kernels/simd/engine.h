// The fast attention engine's body, compiled once per ISA: included only
// inside a target region of kernels/simd/*_target.cc, after
// kernels/simd/micro_kernels.h, in namespace
// attnserve::kernels::ATTN_ISA_NAMESPACE. kernels/fast_attention.h describes
// the engine; kernels/isa.h the dispatch.
#if !defined(ATTN_ISA_LEVEL)
#error "kernels/simd/engine.h is for the per-ISA translation units only"
#endif

using simd::kPanel;
using simd::RoundUpToPanel;

// Query rows per work item and keys per tile. 96 rows = 16 micro-kernel row
// groups; 256 keys keep the scores tile (96 KiB) and a value panel (16 KiB)
// in L2 and L1.
constexpr int64_t kBlockQ = 96;
constexpr int64_t kBlockK = 256;

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// kt: ceil(sk / 16) panels of [(d + w) x 16]: kt[t][e][c] = scale *
// k[16t + c][e] for e < d, the key features b[16t + c][e - d] after (0 past
// sk); row j of k at k + j * ldk, of b at b + j * w. With `turner`, each
// panel's rows go through its TurnRows first (into `turned`, 16 x d).
void PackKeys(const float* k, int64_t ldk, int64_t sk, int64_t d, float scale, const float* b,
              int64_t w, const ScoreModifier* turner, float* turned, float* kt) {
  const int64_t panels = RoundUpToPanel(sk) / kPanel;
  const int64_t depth = d + w;
  for (int64_t t = 0; t < panels; ++t) {
    float* panel = kt + t * depth * kPanel;
    const int64_t cols = std::min<int64_t>(kPanel, sk - t * kPanel);
    const float* keys = k + t * kPanel * ldk;
    int64_t ld = ldk;
    if (turner != nullptr) {
      turner->TurnRows(t * kPanel, cols, keys, ldk, turned, d);
      keys = turned;
      ld = d;
    }
    if (cols == kPanel) {
      simd::TransposeIntoPanel(keys, ld, d, panel, scale);
      if (w > 0) simd::TransposeIntoPanel(b + t * kPanel * w, w, w, panel + d * kPanel);
      continue;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const float* row = keys + c * ld;
      for (int64_t e = 0; e < d; ++e) panel[e * kPanel + c] = scale * row[e];
      const float* features = b + (t * kPanel + c) * w;
      for (int64_t e = 0; e < w; ++e) panel[(d + e) * kPanel + c] = features[e];
    }
    for (int64_t c = cols; c < kPanel; ++c) {
      for (int64_t e = 0; e < depth; ++e) panel[e * kPanel + c] = 0;
    }
  }
}

// Whether the engine works on a copy of each query block (Workspace::q_scaled)
// rather than on q itself: for the query features that follow the scaled
// queries, or for rows the modifier turns.
bool CopiesQueries(const ScoreModifier& modifier) {
  return modifier.feature_width() > 0 || modifier.turns_rows();
}

// Floats of workspace a thread keeps between calls (4 MiB): small requests
// then allocate nothing (no page faults), large ones free theirs on return.
constexpr int64_t kKeptWorkspaceFloats = int64_t{1} << 20;

// One thread's buffers for one call: the packed K and V of the key/value
// head it last worked on (under grouped-query attention the query heads of
// a group reuse them), and the tiles of one query block. Carved from one arena, each
// part starting on a 64-byte line.
class Workspace {
 public:
  Workspace(const AttentionProblem& p, const ScoreModifier& modifier)
      : dv_pad(RoundUpToPanel(p.dv)), depth(p.d + modifier.feature_width()) {
    const int64_t sizes[] = {RoundUpToPanel(p.sk) * depth, p.sk * dv_pad, kBlockQ * kBlockK,
                             kBlockQ * dv_pad,             kBlockQ,       kBlockQ,
                             modifier.ScratchFloats(kBlockQ),
                             CopiesQueries(modifier) ? kBlockQ * depth : 0,
                             modifier.turns_rows() ? kPanel * p.d : 0};
    int64_t total = 0;
    for (int64_t size : sizes) total += RoundUpToPanel(size);
    // Unfilled: every part is written before it is read (packed heads in
    // full, the tiles and row state per block).
    thread_local UnfilledFloats kept;
    UnfilledFloats& arena = total <= kKeptWorkspaceFloats ? kept : owned_;
    if (static_cast<int64_t>(arena.size()) < total) arena.resize(static_cast<size_t>(total));
    float* next = arena.data();
    float** parts[] = {&kt,      &vp,           &scores,   &acc,        &row_max,
                       &row_sum, &block_scratch, &q_scaled, &turned_keys};
    for (size_t n = 0; n < std::size(parts); ++n) {
      *parts[n] = sizes[n] > 0 ? next : nullptr;
      next += RoundUpToPanel(sizes[n]);
    }
  }

  // Whether key/value head kvh (AttentionProblem::KvHead) is packed.
  bool Packed(int64_t kvh) const { return kvh == packed_head_; }

  // Packs the key/value head that query head bh reads, k (times key_scale,
  // with the modifier's key features) and v, unless it is packed already.
  void PackHead(const AttentionProblem& p, const ScoreModifier& modifier, int64_t bh,
                float key_scale) {
    const int64_t kvh = p.KvHead(bh);
    if (Packed(kvh)) return;
    const HeadRows k = p.k_rows(), v = p.v_rows();
    PackKeys(k.Row(kvh, 0), k.stride(), p.sk, p.d, key_scale,
             modifier.KeyFeatures(bh / p.heads, bh % p.heads), depth - p.d,
             modifier.turns_rows() ? &modifier : nullptr, turned_keys, kt);
    simd::PackColumnPanels(v.Row(kvh, 0), v.stride(), p.sk, p.dv, vp);
    packed_head_ = kvh;
  }

  const int64_t dv_pad;
  const int64_t depth;       // D + the modifier's feature width
  float* kt = nullptr;       // [ceil(Sk/16) panels x depth x 16]
  float* vp = nullptr;       // [ceil(Dv/16) panels x Sk x 16]
  float* scores = nullptr;   // [kBlockQ x kBlockK]
  float* acc = nullptr;      // [kBlockQ x dv_pad]
  float* row_max = nullptr;  // [kBlockQ]
  float* row_sum = nullptr;  // [kBlockQ]
  float* block_scratch = nullptr;  // the modifier's, or null
  float* q_scaled = nullptr;       // [kBlockQ x depth]: the block's copied queries, scale * q
                                   // then its query features, or q turned (methods with
                                   // features or turned rows only)
  float* turned_keys = nullptr;    // [16 x D]: a panel's keys turned (turned rows only)

 private:
  UnfilledFloats owned_;
  int64_t packed_head_ = -1;
};

// The softcap c in float: 0 for none, and for a c so large that c *
// tanh(l / c) is l to float precision for every logit float can hold; a c
// below float's normal range as 1e-30 (the capped logits are then all 0 to
// within 1e-29 either way).
inline float FloatSoftCap(double c) {
  if (c <= 0 || c > 1e30) return 0;
  return static_cast<float>(std::max(c, 1e-30));
}

class FastEngine {
 public:
  FastEngine(const PreparedAttention& prepared, float* out, float* probs, bool check_qkv)
      : p_(prepared.problem),
        modifier_(*prepared.modifier),
        features_(modifier_.feature_width()),
        depth_(prepared.problem.d + features_),
        modifies_scores_(!modifier_.scale_only() && features_ == 0),
        scale_inputs_(!modifies_scores_ || modifier_.adds_to_scaled_scores()),
        scale_queries_(scale_inputs_ && features_ > 0),
        turns_rows_(modifier_.turns_rows()),
        copies_queries_(CopiesQueries(modifier_)),
        value_term_(modifier_.HasValueTerm()),
        scale_(static_cast<float>(p_.scale)),
        softcap_(FloatSoftCap(p_.softcap)),
        out_(out),
        probs_(probs),
        check_qkv_(check_qkv) {}

  int64_t query_blocks() const { return (p_.sq + kBlockQ - 1) / kBlockQ; }

  // Whether a block found a value of q, k or v that is not finite.
  bool found_non_finite() const { return non_finite_.load(std::memory_order_relaxed); }

  // Whether a block wrote an output value that is not finite.
  bool wrote_non_finite() const { return out_non_finite_.load(std::memory_order_relaxed); }

  // Query rows [i0, i0 + rows) of head bh.
  void RunBlock(Workspace& ws, int64_t bh, int64_t i0, int64_t rows) const {
    if (check_qkv_) {
      // Checked just before packing reads them: the scan brings them into
      // cache rather than costing a pass of its own.
      const int64_t kvh = p_.KvHead(bh);
      const bool finite = (ws.Packed(kvh) || (RowsFinite(p_.k_rows(), kvh, 0, p_.sk) &&
                                              RowsFinite(p_.v_rows(), kvh, 0, p_.sk))) &&
                          RowsFinite(p_.q_rows(), bh, i0, rows);
      if (!finite) {
        non_finite_.store(true, std::memory_order_relaxed);
        return;
      }
    }
    // The scale goes into an operand once (S x D multiplies) instead of into
    // every score (Sq x Sk): into the packed keys as they are transposed, or
    // into the block's copied queries where query features follow them.
    ws.PackHead(p_, modifier_, bh, scale_inputs_ && !scale_queries_ ? scale_ : 1.0f);
    const KeyTiles tiles = TilesOf(bh / p_.heads, i0, rows);
    std::fill_n(ws.acc, rows * ws.dv_pad, 0.0f);
    if (scale_queries_) {
      const HeadRows q = p_.q_rows();
      const float* bias = modifier_.QueryBias(bh % p_.heads);
      for (int64_t r = 0; r < rows; ++r) {
        const float* src = q.Row(bh, i0 + r);
        float* dst = ws.q_scaled + r * depth_;
        if (bias != nullptr) {
          for (int64_t e = 0; e < p_.d; ++e) dst[e] = (src[e] + bias[e]) * scale_;
        } else {
          for (int64_t e = 0; e < p_.d; ++e) dst[e] = src[e] * scale_;
        }
      }
    } else if (turns_rows_) {
      const HeadRows q = p_.q_rows();
      modifier_.TurnRows(p_.query_offset + i0, rows, q.Row(bh, i0), q.stride(), ws.q_scaled,
                         depth_);
    }
    const ScoreTile block{bh / p_.heads, bh % p_.heads, i0, rows, 0, p_.sk, ws.block_scratch};
    if (features_ > 0) {
      // The query features follow the scaled queries: [q | a] . [k | b].
      modifier_.QueryFeatures(block, ws.q_scaled + p_.d, depth_);
    } else if (ws.block_scratch != nullptr) {
      modifier_.BeginQueryBlock(block);
    }
    if (probs_ == nullptr) {
      OnlineSoftmax(ws, bh, i0, rows, tiles);
    } else {
      ExactSoftmax(ws, bh, i0, rows, tiles);
    }
  }

 private:
  // The key tiles a query block computes: the keys from its rows' first
  // visible one (down to a panel) to their last, in tiles of at most
  // kBlockK keys split where the rows' ranges stop differing, so that the
  // keys every row sees form whole tiles (one Gemm each) and only the bands
  // at the edges (the causal diagonal, a window's lower edge: about as
  // wide as the block) take the partial path. Rows that see no key do not
  // count; no tile at all when none sees one.
  struct KeyTiles {
    int64_t begin = 0, lower_end = 0, upper_begin = 0, end = 0;

    int64_t TileEnd(int64_t j0) const {
      const int64_t limit = j0 + kBlockK;
      if (end <= limit) return end;
      if (upper_begin > j0 && upper_begin <= limit) return upper_begin;
      if (lower_end > j0 && lower_end <= limit) return lower_end;
      return limit;
    }
  };

  KeyTiles TilesOf(int64_t b, int64_t i0, int64_t rows) const {
    int64_t begin = p_.sk, end = 0, last_begin = 0, first_end = p_.sk;
    for (int64_t r = 0; r < rows; ++r) {
      const KeyRange keys = p_.VisibleKeys(b, i0 + r);
      if (keys.end == keys.begin) continue;
      begin = std::min(begin, keys.begin);
      end = std::max(end, keys.end);
      last_begin = std::max(last_begin, keys.begin);
      first_end = std::min(first_end, keys.end);
    }
    KeyTiles tiles;
    if (begin >= end) return tiles;
    tiles.begin = begin / kPanel * kPanel;
    tiles.end = end;
    // Panel-aligned splits (the packed keys are addressed by panel).
    tiles.lower_end = std::clamp(RoundUpToPanel(last_begin), tiles.begin, end);
    tiles.upper_begin = std::clamp(first_end / kPanel * kPanel, tiles.lower_end, end);
    return tiles;
  }

  // Checks out's rows [i0, i0 + rows) of head bh (contiguous) just after the
  // block wrote them (in cache): Attend's own scan of the output would be a
  // serial pass of its own.
  void CheckOutput(int64_t bh, int64_t i0, int64_t rows) const {
    if (!simd::AllFinite(out_ + (bh * p_.sq + i0) * p_.dv, rows * p_.dv)) {
      out_non_finite_.store(true, std::memory_order_relaxed);
    }
  }

  // Rows [r0, r0 + n) of head bh are all finite.
  static bool RowsFinite(const HeadRows& rows, int64_t bh, int64_t r0, int64_t n) {
    if (rows.stride() == rows.width) return simd::AllFinite(rows.Row(bh, r0), n * rows.width);
    for (int64_t r = r0; r < r0 + n; ++r) {
      if (!simd::AllFinite(rows.Row(bh, r), rows.width)) return false;
    }
    return true;
  }

  // The columns [begin, end) of tile [j0, j0 + n) that query i of batch
  // element b sees (begin == end: none).
  KeyRange VisibleInTile(int64_t b, int64_t i, int64_t j0, int64_t n) const {
    const KeyRange keys = p_.VisibleKeys(b, i);
    const int64_t begin = std::clamp<int64_t>(keys.begin - j0, 0, n);
    return {begin, std::clamp<int64_t>(keys.end - j0, begin, n)};
  }

  // The columns of tile [j0, j0 + n) that some row of rows [i0 + r, i0 + r +
  // group) sees: from the first row's first to the last row's last
  // (VisibleKeys never decreases with the row).
  KeyRange GroupInTile(int64_t b, int64_t i, int64_t group, int64_t j0, int64_t n) const {
    const int64_t begin = VisibleInTile(b, i, j0, n).begin;
    return {begin, std::max(begin, VisibleInTile(b, i + group - 1, j0, n).end)};
  }

  ScoreTile Tile(Workspace& ws, int64_t bh, int64_t i0, int64_t rows, int64_t j0,
                int64_t n) const {
    return {bh / p_.heads, bh % p_.heads, i0,
            rows,          j0,            n,
            ws.block_scratch};
  }

  // Raw dot products of query rows [i0, i0 + rows) with keys [j0, j0 + n)
  // into s (leading dimension ld), then the method's logits.
  void ComputeScores(Workspace& ws, int64_t bh, int64_t i0, int64_t rows, int64_t j0,
                     int64_t n, float* s, int64_t ld) const {
    const HeadRows q = p_.q_rows();
    const float* a = copies_queries_ ? ws.q_scaled : q.Row(bh, i0);
    const int64_t lda = copies_queries_ ? depth_ : q.stride();
    const float* kt = ws.kt + j0 * depth_;
    const int64_t b = bh / p_.heads;
    if (!Partial(b, i0, rows, j0, n)) {
      simd::Gemm<false>(rows, RoundUpToPanel(n), depth_, a, lda, kt, depth_ * kPanel, s, ld);
    } else {
      // A row group computes only the panels holding keys some of its rows
      // see (the other scores are never read: the softmax reads each row's
      // visible keys only), and the last to the nearest 8: a last panel
      // needed only up to its eighth column gets the half-width kernel (on
      // AVX2 and the baseline).
      for (int64_t r = 0; r < rows; r += simd::kRows) {
        const int group = static_cast<int>(std::min<int64_t>(simd::kRows, rows - r));
        const KeyRange cols = GroupInTile(b, i0 + r, group, j0, n);
        if (cols.end == cols.begin) continue;
        const int64_t visible = cols.end;
        const int64_t full_panels = visible / kPanel;
        const int64_t first_panel = cols.begin / kPanel;
        if (full_panels > first_panel) {
          // The whole panels on Gemm's widest register tile (two panels on
          // AVX-512): a window leaves most tiles partial.
          simd::Gemm<false>(group, (full_panels - first_panel) * kPanel, depth_, a + r * lda,
                            lda, kt + first_panel * depth_ * kPanel, depth_ * kPanel,
                            s + r * ld + first_panel * kPanel, ld);
        }
        const int64_t rest = visible - full_panels * kPanel;
        const float* last = kt + full_panels * depth_ * kPanel;
        float* out = s + r * ld + full_panels * kPanel;
        if (rest > kPanel / 2) {
          simd::PanelRows<false>(group, depth_, a + r * lda, lda, last, out, ld);
        } else if (rest > 0) {
          simd::PanelRows<false, 8>(group, depth_, a + r * lda, lda, last, out, ld);
        }
      }
    }
    if (modifies_scores_) {
      modifier_.ModifyScores(Tile(ws, bh, i0, rows, j0, n), s, ld);
    }
  }

  // acc += P V for keys [j0, j0 + n), plus the modifier's value term.
  void AccumulateValues(Workspace& ws, int64_t bh, int64_t i0, int64_t rows, int64_t j0,
                        int64_t n, const float* weights, int64_t ld) const {
    if (value_term_) {
      modifier_.AccumulateValueTerm(Tile(ws, bh, i0, rows, j0, n), weights, ld, ws.acc,
                                    ws.dv_pad);
    }
    const float* vp = ws.vp + j0 * kPanel;
    const int64_t b = bh / p_.heads;
    if (!Partial(b, i0, rows, j0, n)) {
      simd::Gemm<true>(rows, ws.dv_pad, n, weights, ld, vp, p_.sk * kPanel, ws.acc, ws.dv_pad);
      return;
    }
    // A row group's weights are zero outside the keys some of its rows see.
    for (int64_t r = 0; r < rows; r += simd::kRows) {
      const int group = static_cast<int>(std::min<int64_t>(simd::kRows, rows - r));
      const KeyRange cols = GroupInTile(b, i0 + r, group, j0, n);
      if (cols.end == cols.begin) continue;
      simd::Gemm<true>(group, ws.dv_pad, cols.end - cols.begin, weights + r * ld + cols.begin,
                       ld, vp + cols.begin * kPanel, p_.sk * kPanel, ws.acc + r * ws.dv_pad,
                       ws.dv_pad);
    }
  }

  // Whether some query of rows [i0, i0 + rows) of batch element b cannot
  // see the whole tile [j0, j0 + n): its first row starts after j0 or ends
  // before j0 + n (the masks' ranges never decrease with the row).
  bool Partial(int64_t b, int64_t i0, int64_t rows, int64_t j0, int64_t n) const {
    if (!p_.causal && !p_.masks_keys()) return false;
    return p_.VisibleKeys(b, i0).end < j0 + n || p_.VisibleKeys(b, i0 + rows - 1).begin > j0;
  }

  // c * tanh(x / c) over x[0..n) (attention-variants.md 5), when set.
  void SoftCap(float* x, int64_t n) const {
    if (softcap_ > 0 && n > 0) simd::SoftCap(x, n, softcap_);
  }

  // Streams over key blocks keeping a running max m and sum l per row; acc
  // holds sum_j exp(s_j - m) v_j and is rescaled by exp(m_old - m_new).
  void OnlineSoftmax(Workspace& ws, int64_t bh, int64_t i0, int64_t rows,
                     const KeyTiles& tiles) const {
    float* s = ws.scores;
    float* m = ws.row_max;
    float* l = ws.row_sum;
    const int64_t b = bh / p_.heads;
    std::fill_n(m, rows, kMinusInf);
    std::fill_n(l, rows, 0.0f);
    for (int64_t j0 = tiles.begin, n = 0; j0 < tiles.end; j0 += n) {
      n = tiles.TileEnd(j0) - j0;
      ComputeScores(ws, bh, i0, rows, j0, n, s, kBlockK);
      // The weights P.V reads outside a row's [cols.begin, cols.end) must
      // be 0: the rest of its row group's columns (GroupInTile), at most
      // kRows - 1 keys past cols.end (each mask's end grows by at most one
      // a row); a value term reads the whole tile.
      int64_t group_end = n;
      for (int64_t r = 0; r < rows; ++r) {
        float* row = s + r * kBlockK;
        const KeyRange cols = VisibleInTile(b, i0 + r, j0, n);
        if (r % simd::kRows == 0 && !value_term_) {
          const int64_t group = std::min<int64_t>(simd::kRows, rows - r);
          group_end = GroupInTile(b, i0 + r, group, j0, n).end;
        }
        const int64_t read_end = std::max(cols.end, group_end);
        if (cols.end == cols.begin) {
          std::fill(row, row + read_end, 0.0f);
          continue;
        }
        SoftCap(row + cols.begin, cols.end - cols.begin);
        // From the vector holding the first visible key (the ones before it
        // -inf: exp gives 0), so the padded tail stays inside the row.
        const int64_t start = cols.begin / simd::kLanes * simd::kLanes;
        if (cols.begin > 0) {  // Not the common case: no calls for empty ranges.
          std::fill(row, row + start, 0.0f);
          std::fill(row + start, row + cols.begin, kMinusInf);
        }
        const int64_t width = cols.end - start;
        const float tile_max = simd::Max(row + start, width, simd::Tail::kPadded);
        const float new_max = std::max(m[r], tile_max);
        // Zeroes the row past cols.end up to a multiple of kLanes too.
        const float sum = simd::ExpAndSum(row + start, width, new_max, simd::Tail::kPadded);
        const int64_t zeroed = start + (width + simd::kLanes - 1) / simd::kLanes * simd::kLanes;
        simd::ZeroVectors(row, zeroed, read_end);  // Inside the tile's row (kBlockK wide).
        if (m[r] == kMinusInf) {
          m[r] = new_max;  // The row's first visible tile: acc and l are still 0.
        } else if (new_max != m[r]) {
          const float alpha = std::exp(m[r] - new_max);
          l[r] *= alpha;
          simd::Scale(ws.acc + r * ws.dv_pad, ws.dv_pad, alpha);
          m[r] = new_max;
        }
        l[r] += sum;
      }
      AccumulateValues(ws, bh, i0, rows, j0, n, s, kBlockK);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* acc = ws.acc + r * ws.dv_pad;
      float* out = out_ + (bh * p_.sq + i0 + r) * p_.dv;
      // A row that saw no key gets zeros (attention-variants.md 4). One
      // that did has l >= 1 (its max contributes exp(0) = 1) unless the
      // scores overflowed (then out is not finite and Attend says so).
      const KeyRange keys = p_.VisibleKeys(b, i0 + r);
      if (keys.end == keys.begin) {
        std::fill_n(out, p_.dv, 0.0f);
        continue;
      }
      const float inverse = 1.0f / l[r];
      for (int64_t e = 0; e < p_.dv; ++e) out[e] = acc[e] * inverse;
    }
    CheckOutput(bh, i0, rows);
  }

  // With probs requested: logits straight into the probs rows, an exact
  // softmax per row there, then acc = P V from those rows.
  void ExactSoftmax(Workspace& ws, int64_t bh, int64_t i0, int64_t rows,
                    const KeyTiles& tiles) const {
    float* p = probs_ + (bh * p_.sq + i0) * p_.sk;
    const int64_t b = bh / p_.heads;
    for (int64_t j0 = tiles.begin, n = 0; j0 < tiles.end; j0 += n) {
      n = tiles.TileEnd(j0) - j0;
      // The micro-kernel writes whole panels; a last tile whose panels pass
      // Sk goes through the scores tile instead.
      if (RoundUpToPanel(n) <= p_.sk - j0) {
        ComputeScores(ws, bh, i0, rows, j0, n, p + j0, p_.sk);
      } else {
        ComputeScores(ws, bh, i0, rows, j0, n, ws.scores, kBlockK);
        for (int64_t r = 0; r < rows; ++r) {
          std::copy_n(ws.scores + r * kBlockK, n, p + r * p_.sk + j0);
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* row = p + r * p_.sk;
      const KeyRange keys = VisibleInTile(b, i0 + r, 0, p_.sk);
      const int64_t visible = keys.end - keys.begin;
      std::fill(row, row + keys.begin, 0.0f);
      std::fill(row + keys.end, row + p_.sk, 0.0f);
      if (visible == 0) continue;  // A row that sees no key: all zeros.
      SoftCap(row + keys.begin, visible);
      const float max = simd::Max(row + keys.begin, visible);
      const float sum = simd::ExpAndSum(row + keys.begin, visible, max);
      simd::Scale(row + keys.begin, visible, 1.0f / sum);
    }
    for (int64_t j0 = tiles.begin, n = 0; j0 < tiles.end; j0 += n) {
      n = tiles.TileEnd(j0) - j0;
      AccumulateValues(ws, bh, i0, rows, j0, n, p + j0, p_.sk);
    }
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(ws.acc + r * ws.dv_pad, p_.dv, out_ + (bh * p_.sq + i0 + r) * p_.dv);
    }
    CheckOutput(bh, i0, rows);
  }

  const AttentionProblem& p_;
  const ScoreModifier& modifier_;
  const int64_t features_, depth_;
  const bool modifies_scores_, scale_inputs_, scale_queries_, turns_rows_, copies_queries_,
      value_term_;
  const float scale_, softcap_;
  float* const out_;
  float* const probs_;
  const bool check_qkv_;
  mutable std::atomic<bool> non_finite_{false};
  mutable std::atomic<bool> out_non_finite_{false};
};

absl::StatusOr<AttendResult> RunFastAttention(const PreparedAttention& prepared,
                                              bool return_probs, const ComputeOptions& options,
                                              bool check_qkv) {
  const AttentionProblem& p = prepared.problem;
  AttendResult result;
  result.out = AttendOutput({p.batch, p.heads, p.sq, p.dv}, options);
  // Every probs row is written in full (zeros where the row sees no key).
  if (return_probs) result.probs = Tensor::Uninitialized({p.batch, p.heads, p.sq, p.sk});
  const FastEngine engine(prepared, result.out.data(),
                          return_probs ? result.probs->data() : nullptr, check_qkv);

  const int64_t blocks = engine.query_blocks();
  const int64_t items = p.batch * p.heads * blocks;
  // A window bounds the keys a row sees (and the blocks computed).
  const int64_t keys_per_row = p.window > 0 ? std::min(p.sk, 2 * p.window) : p.sk;
  const double work = static_cast<double>(p.batch * p.heads * p.sq) *
                      static_cast<double>(keys_per_row) * static_cast<double>(p.d + p.dv);
  const int threads = static_cast<int>(std::min<int64_t>(ThreadsFor(work, options), items));
  std::vector<std::unique_ptr<Workspace>> workspaces(static_cast<size_t>(std::max(threads, 1)));
  std::atomic<bool> stopped{false};
  // Items run in (batch, head, query block) order, handed out in runs of
  // consecutive items (about four runs per thread, for balance under causal
  // masking), so a thread mostly finds the head it needs already packed
  // rather than every thread packing every head.
  const int64_t run = std::max<int64_t>(1, items / (4 * std::max(threads, 1)));
  ParallelFor(items, threads, run, [&](int64_t begin, int64_t end) {
    // threads > 1 means a team of exactly `threads` here (ParallelFor runs
    // inline otherwise, where the caller's own OpenMP thread number could be
    // anything).
    const int slot = threads > 1 ? omp_get_thread_num() : 0;
    std::unique_ptr<Workspace>& ws = workspaces[static_cast<size_t>(slot)];
    if (ws == nullptr) ws = std::make_unique<Workspace>(p, *prepared.modifier);
    for (int64_t item = begin; item < end; ++item) {
      if (options.cancelled != nullptr && options.cancelled->load(std::memory_order_relaxed)) {
        stopped.store(true, std::memory_order_relaxed);
        return;
      }
      if (engine.found_non_finite()) return;
      const int64_t bh = item / blocks;
      const int64_t i0 = (item % blocks) * kBlockQ;
      engine.RunBlock(*ws, bh, i0, std::min(kBlockQ, p.sq - i0));
    }
  });
  if (stopped.load()) return absl::CancelledError("the call was cancelled while computing");
  if (engine.found_non_finite()) {
    // Named as Attend's own check would have: the first bad value, the
    // tensors in name order.
    ATTN_RETURN_IF_ERROR(CheckFiniteValues(p.k, "k"));
    ATTN_RETURN_IF_ERROR(CheckFiniteValues(p.q, "q"));
    ATTN_RETURN_IF_ERROR(CheckFiniteValues(p.v, "v"));
  }
  if (engine.wrote_non_finite()) return OutputOverflowError();
  return result;
}
