#include "kernels/onednn_isa.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attnserve::kernels {
namespace {

dnnl::cpu_isa Matching(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return dnnl::cpu_isa::avx512_core;
    case Isa::kAvx2: return dnnl::cpu_isa::avx2;
    case Isa::kBaseline: return dnnl::cpu_isa::sse41;
  }
  return dnnl::cpu_isa::sse41;
}

}  // namespace

absl::Status CapOneDnnIsa(Isa isa) {
  const char* operator_cap = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (operator_cap != nullptr && *operator_cap != '\0') return absl::OkStatus();
  const dnnl::cpu_isa cap = Matching(isa);
  try {
    dnnl::set_max_cpu_isa(cap);
  } catch (const dnnl::error& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot cap oneDNN at ", IsaName(isa), ": ", e.what()));
  }
  // oneDNN 2.6 accepts a cap after its first primitive and ignores it: the
  // effective ISA says whether it took. dnnl_cpu_isa_t values are feature
  // bit sets, each including the ISAs below it.
  const auto effective = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  if ((effective & ~static_cast<unsigned>(cap)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot cap oneDNN at ", IsaName(isa), ": it runs ", OneDnnIsaName(),
                     " already (its ISA is fixed at its first primitive)"));
  }
  return absl::OkStatus();
}

std::string OneDnnIsaName() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::all: return "all";
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic: return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
  }
  return "unknown";
}

}  // namespace attnserve::kernels
