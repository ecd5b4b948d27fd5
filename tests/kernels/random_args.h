// Seeded random attend requests for every positional method, for the
// differential and common-rule tests: one description of the geometry
// (RandomCase), the method's inputs drawn from a std::mt19937.
//
// Values are float32 uniform draws in small ranges (q, k, v in [-1, 1],
// weights scaled by 1/sqrt(fan-in)), so the scores stay in a range where a
// float32 engine meets rtol 1e-4 / atol 1e-5 against the double reference.
#ifndef ATTNSERVE_TESTS_KERNELS_RANDOM_ARGS_H_
#define ATTNSERVE_TESTS_KERNELS_RANDOM_ARGS_H_

#include <cstdint>
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

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_KERNELS_RANDOM_ARGS_H_
