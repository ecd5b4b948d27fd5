// Seeded random attend requests for every positional method, for the
// differential and common-rule tests: one description of the geometry
// (RandomCase), the method's inputs drawn from a std::mt19937, and the list
// of seeded cases both differential tests run (AllDiffCases).
//
// Values are float32 uniform draws in small ranges (q, k, v in [-1, 1],
// weights scaled by 1/sqrt(fan-in)), so the scores stay in a range where a
// float32 engine meets rtol 1e-4 / atol 1e-5 against the double reference.
#ifndef ATTNSERVE_TESTS_KERNELS_RANDOM_ARGS_H_
#define ATTNSERVE_TESTS_KERNELS_RANDOM_ARGS_H_

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/tensor.h"

namespace attnserve::testing {

struct RandomCase {
  kernels::MethodKind method = kernels::MethodKind::kNone;
  int64_t batch = 1, heads = 1, sq = 4, sk = 4, d = 8, dv = 8;
  int64_t d_model = 8;  // sinusoidal, learned: the input width
  bool causal = false;
  std::optional<double> scale;
  std::optional<int64_t> query_offset;
  kernels::MethodParams params;  // rope's; d_rel and K come from below
  int64_t extra_table_rows = 2;  // learned: rows beyond the last position used
  int64_t d_rel = 8;             // transformer_xl
  int64_t max_relative_position = 3;  // shaw
  // da_transformer: dist_w ~ U(-1, 1) * w_scale, dist_v ~ U(-1, 1) * v_scale + v_shift.
  double w_scale = 1, v_scale = 2, v_shift = 0;
  // attention-variants.md 1-5: H_kv (0: heads; k and v, or w_k and w_v,
  // get H_kv heads, and num_kv_heads is set for the absolute methods),
  // kv_lengths, window, softcap.
  int64_t kv_heads = 0;
  std::vector<int64_t> kv_lengths;
  std::optional<int64_t> window;
  std::optional<double> softcap;
  // alibi: send slopes ~ U(-0.25, 0.5) (attention-variants.md 7) instead of
  // leaving get_slopes to the method.
  bool custom_slopes = false;

  // "b2 h3 sq5 sk7 d5 dv3 causal offset=4 scale=-0.5 ..." for test output.
  std::string Describe() const;
};

// A float32 tensor of `shape` with values uniform in [lo, hi).
kernels::Tensor RandomTensor(std::vector<int64_t> shape, std::mt19937& rng, double lo = -1,
                             double hi = 1);

// The request of `c`: the method's inputs (q, k, v or the projection inputs,
// and its tables), num_heads, causal, scale, query_offset and params;
// return_probs is set.
kernels::AttendArgs RandomAttendArgs(const RandomCase& c, std::mt19937& rng);

// Uniform draws in [lo, hi] (integers) and [lo, hi) (reals).
int64_t Uniform(std::mt19937& rng, int64_t lo, int64_t hi);
double UniformReal(std::mt19937& rng, double lo, double hi);

// One seeded case of the differential tests: its geometry, the label of the
// recipe that drew it, and the seed (1000 * (method + 1) + case index).
struct DiffCase {
  RandomCase c;
  std::string label;
  uint32_t seed = 0;
};

// "rope/half_ntk_partial seed=4007 (b1 h2 ...)", for gtest output.
void PrintTo(const DiffCase& d, std::ostream* os);

// Every method x the common geometries (odd D, D != Dv, Sq != Sk, offsets
// beyond Sk - Sq, Sq > Sk, S = 1, S ~ 100, B and H > 1, explicit and negative
// scales, causal and not) plus each method's own variants (every RoPE layout
// x scaling x partial rotary_dim, yarn / llama3 / dynamic_ntk with explicit
// and default parameters on both sides of L0, Shaw K = 0 and K > S, Transformer-XL
// memory, DA large and negative w / v, ALiBi heads not powers of two and
// custom slopes), and
// last, per method, two geometries over several of the fast engine's blocks.
std::vector<DiffCase> AllDiffCases();

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_KERNELS_RANDOM_ARGS_H_
