// ParallelFor: splits [0, n) into chunks run on up to `threads` OpenMP threads.
//
// OpenMP because oneDNN (Debian's build) uses it too: one runtime, one pool.
#ifndef ATTNSERVE_KERNELS_PARALLEL_H_
#define ATTNSERVE_KERNELS_PARALLEL_H_

#include <algorithm>
#include <cstdint>

namespace attnserve::kernels {

// Calls fn(begin, end) on disjoint ranges covering [0, n), each at most
// `grain` long. fn must not throw. threads <= 1 runs inline.
template <typename Fn>
void ParallelFor(int64_t n, int threads, int64_t grain, const Fn& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  if (threads <= 1 || chunks == 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int team = static_cast<int>(std::min<int64_t>(threads, chunks));
#pragma omp parallel for num_threads(team) schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    fn(c * grain, std::min(n, (c + 1) * grain));
  }
}

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_PARALLEL_H_
