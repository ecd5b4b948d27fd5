// oneDNN's instruction set kept in step with the kernels' (kernels/isa.h):
// with --max_isa=avx2 (or ATTN_MAX_ISA) the whole server, oneDNN's
// projections included, runs the instructions an AVX2 machine has, and the
// benchmark's oneDNN ceiling runs at the engine's ISA.
//
// oneDNN fixes its ISA at its first primitive; CapOneDnnIsa must come
// before (attnd: at start-up, right after ChooseIsa). ONEDNN_MAX_CPU_ISA, when
// set, is the operator's word for oneDNN and is left alone.
//
// Thread-safety: call CapOneDnnIsa once, before any kernel runs;
// OneDnnIsaName is safe from any thread.
#ifndef ATTNSERVE_KERNELS_ONEDNN_ISA_H_
#define ATTNSERVE_KERNELS_ONEDNN_ISA_H_

#include <string>

#include "absl/status/status.h"
#include "kernels/isa.h"

namespace attnserve::kernels {

// Caps oneDNN at the ISA matching `isa`: avx512 -> avx512_core (F, BW, DQ,
// VL, as the kernels' avx512), avx2 -> avx2, baseline -> sse41 (oneDNN's
// lowest; it falls back to its reference code on a CPU without SSE4.1).
// Nothing is changed when ONEDNN_MAX_CPU_ISA is set. FAILED_PRECONDITION
// when oneDNN has fixed a higher ISA already (at its first primitive).
absl::Status CapOneDnnIsa(Isa isa);

// The ISA oneDNN's JIT uses (after its cap): "avx512_core", "avx2", ...
std::string OneDnnIsaName();

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_ONEDNN_ISA_H_
