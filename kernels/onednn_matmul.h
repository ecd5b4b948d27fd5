// Row-major fp32 matrix products on oneDNN 2.6's dnnl::matmul, for the
// dense projections (x @ w_q and friends).
//
// Primitives are created once per (shape, leading dimensions, threads) and
// cached for the life of the process; each call supplies its own scratchpad
// (scratchpad_mode::user), so one cached primitive may run on many threads at
// once. oneDNN threads through OpenMP: a call made inside an OpenMP parallel
// region runs on its own thread only.
//
// Thread-safety: MatMul is thread-safe. No exception leaves this module:
// dnnl::error becomes INTERNAL.
#ifndef ATTNSERVE_KERNELS_ONEDNN_MATMUL_H_
#define ATTNSERVE_KERNELS_ONEDNN_MATMUL_H_

#include <cstdint>

#include "absl/status/status.h"

namespace attnserve::kernels {

// y[m x n] = x[m x k] @ w[k x n], each row-major with the given leading
// dimensions (ldx >= k, ldw >= n, ldy >= n). `threads` bounds oneDNN's
// OpenMP team for this call. The buffers must not overlap.
absl::Status MatMul(int64_t m, int64_t k, int64_t n, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float* y, int64_t ldy, int threads);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_ONEDNN_MATMUL_H_
