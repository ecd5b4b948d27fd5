// The position-dependent tables of positional-methods.md, computed in double
// precision as section 1.6 requires (the angle position * frequency is formed
// in double and sin/cos take the double angle). Each is defined in its
// method's file; they are exposed for the methods' unit tests.
//
// All functions are pure and thread-safe.
#ifndef ATTNSERVE_KERNELS_POSITIONAL_TABLES_H_
#define ATTNSERVE_KERNELS_POSITIONAL_TABLES_H_

#include <cstdint>
#include <vector>

#include "kernels/attention.h"

namespace attnserve::kernels {

// sinusoidal.cc, 2.2: row `position` of P, d_model columns, interleaved
// sin/cos; an odd d_model ends in a lone sine. out has d_model entries.
void SinusoidRow(double position, int64_t d_model, double base, double* out);

// rope.cc, 2.4 and attention-variants.md 7: what sets the rotation angle
// phi_n of pair n (n < rotary_dim / 2) at a position, after the configured
// scaling. Parameters are already validated (MakeConfig in rope.cc).
struct RopeConfig {
  RopeLayout layout = RopeLayout::kInterleaved;
  double base = 10000;
  RopeScaling scaling = RopeScaling::kNone;
  double scaling_factor = 1;
  int64_t rotary_dim = 0;
  // yarn, llama3, dynamic_ntk: L0 (>= 1) and the resolved defaults.
  int64_t original_max_position = 0;
  double beta_fast = 32, beta_slow = 1;
  double attention_factor = 1;  // yarn: 0.1 * ln(s) + 1 unless set
  double low_freq_factor = 1, high_freq_factor = 4;
  // dynamic_ntk: the call's length L (Attend: max(Sk, query_offset + Sq);
  // Encode: offset + S), which chooses base'.
  int64_t length = 0;
};
// The frequency f'_n of each pair, n = 0 .. rotary_dim/2 - 1, written to out:
// the angle of pair n at position p is p * f'_n (p / s * f_n for linear
// scaling, whose position is divided). NTK and dynamic NTK change the base;
// llama3 and yarn blend f_n and f_n / s per pair.
void RopeFrequencies(const RopeConfig& config, double* out);
// The factor on cos and sin of every rotated pair: yarn's attention_factor,
// 1 for every other scaling.
double RopeMagnitude(const RopeConfig& config);

// transformer_xl.cc, 2.5: R(r), d_rel entries: all sines, then all cosines.
void TransformerXlSinusoid(double r, int64_t d_rel, double base, double* out);

// alibi.cc, 2.7: the slopes m_1 .. m_H of the public get_slopes (the default
// when a call sends no `slopes`, attention-variants.md 7).
std::vector<double> AlibiSlopes(int64_t heads);

// da_transformer.cc, 2.8: Rhat = (1 + exp(v)) / (1 + exp(v - w * distance)),
// evaluated without overflow for any finite w, v (the result itself may be
// +inf only when it exceeds the double range).
double DaCoefficient(double w, double v, double distance);
// DaCoefficient at distances first_distance .. first_distance + count - 1
// into out[0 .. count), within ~1e-14 relative of it, a multiply and a
// divide per distance where the exponent allows (no exp per distance).
void DaCoefficients(double w, double v, int64_t first_distance, int64_t count, double* out);

// shaw.cc, 2.6: idx = clip(k_pos - q_pos, -K, K) + K.
inline int64_t ShawIndex(int64_t q_pos, int64_t k_pos, int64_t max_relative_position) {
  int64_t a = k_pos - q_pos;
  if (a < -max_relative_position) a = -max_relative_position;
  if (a > max_relative_position) a = max_relative_position;
  return a + max_relative_position;
}

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_POSITIONAL_TABLES_H_
