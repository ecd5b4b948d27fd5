// Every header the per-ISA code (kernels/simd/target_body.h) uses, for the
// per-ISA translation units to include BEFORE their target region: inline
// functions and templates declared out here (the standard library's, absl's,
// the kernels' own) keep the default target, so the linker's one copy of
// each runs on every CPU. Only what the region itself defines gets its ISA.
#ifndef ATTNSERVE_KERNELS_SIMD_TARGET_PRELUDE_H_
#define ATTNSERVE_KERNELS_SIMD_TARGET_PRELUDE_H_

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/isa.h"
#include "kernels/parallel.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/simd/panels.h"
#include "kernels/simd/targets.h"
#include "kernels/status_macros.h"

#endif  // ATTNSERVE_KERNELS_SIMD_TARGET_PRELUDE_H_
