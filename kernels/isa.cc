#include "kernels/isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "kernels/simd/targets.h"

namespace attnserve::kernels {
namespace {

// The chosen kernels: null until the choice is fixed.
std::atomic<const IsaKernels*> active{nullptr};
std::mutex choice_mutex;

const IsaKernels* Table(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return simd::Avx512Kernels();
    case Isa::kAvx2: return simd::Avx2Kernels();
    case Isa::kBaseline: return &simd::BaselineKernels();
  }
  return &simd::BaselineKernels();
}

Isa Lower(Isa a, Isa b) { return static_cast<int>(a) < static_cast<int>(b) ? a : b; }

// Fixes the choice to min(cap, CpuIsa()) unless it is fixed already;
// returns the fixed one.
const IsaKernels& Fix(std::optional<Isa> cap) {
  std::lock_guard<std::mutex> lock(choice_mutex);
  const IsaKernels* chosen = active.load(std::memory_order_acquire);
  if (chosen != nullptr) return *chosen;
  const Isa isa = cap.has_value() ? Lower(*cap, CpuIsa()) : CpuIsa();
  chosen = Table(isa);
  active.store(chosen, std::memory_order_release);
  return *chosen;
}

}  // namespace

absl::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kBaseline: return "baseline";
  }
  return "baseline";
}

absl::StatusOr<Isa> ParseIsa(absl::string_view value, absl::string_view source) {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (value == IsaName(isa)) return isa;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": must be one of avx512, avx2, baseline, got \"", value, "\""));
}

namespace {

#if defined(__x86_64__) || defined(__i386__)
// F16C (CPUID.1:ECX bit 29): Clang's __builtin_cpu_supports does not know
// "f16c". The ymm state the instructions use is the AVX check's.
bool HasF16c() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif

}  // namespace

Isa CpuIsa() {
  static const Isa best = [] {
    // GCC's __builtin_cpu_supports checks the OS's XSAVE state too (a
    // hypervisor may expose AVX-512 in CPUID and not save zmm registers).
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (simd::Avx512Kernels() != nullptr && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && HasF16c()) {
      return Isa::kAvx512;
    }
    // F16C too: both targets are compiled with it (every AVX2 CPU has it).
    if (simd::Avx2Kernels() != nullptr && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && HasF16c()) {
      return Isa::kAvx2;
    }
#endif
    return Isa::kBaseline;
  }();
  return best;
}

absl::StatusOr<std::optional<Isa>> MaxIsaFromEnvironment() {
  const char* value = std::getenv("ATTN_MAX_ISA");
  if (value == nullptr || *value == '\0') return std::optional<Isa>();
  auto isa = ParseIsa(value, "ATTN_MAX_ISA");
  if (!isa.ok()) return isa.status();
  return std::optional<Isa>(*isa);
}

absl::Status SetMaxIsa(Isa cap) {
  const Isa wanted = Lower(cap, CpuIsa());
  const Isa fixed = Fix(cap).isa;
  if (fixed != wanted) {
    return absl::FailedPreconditionError(
        absl::StrCat("the kernels' ISA is fixed to ", IsaName(fixed), " already; cannot cap it at ",
                     IsaName(cap)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Isa> ChooseIsa(absl::string_view max_isa_flag) {
  std::optional<Isa> cap;
  if (!max_isa_flag.empty()) {
    auto parsed = ParseIsa(max_isa_flag, "--max_isa");
    if (!parsed.ok()) return parsed.status();
    cap = *parsed;
  } else {
    auto from_environment = MaxIsaFromEnvironment();
    if (!from_environment.ok()) return from_environment.status();
    cap = *from_environment;
  }
  if (cap.has_value()) {
    absl::Status set = SetMaxIsa(*cap);
    if (!set.ok()) return set;
  }
  return ActiveIsa();
}

const IsaKernels& Kernels() {
  const IsaKernels* chosen = active.load(std::memory_order_acquire);
  if (chosen != nullptr) return *chosen;
  auto cap = MaxIsaFromEnvironment();
  if (!cap.ok()) {
    // No caller can get an answer from the wrong kernels: a library user who
    // set an unknown value learns it here.
    std::fprintf(stderr, "%s\n", cap.status().ToString().c_str());
    std::exit(2);
  }
  return Fix(*cap);
}

Isa ActiveIsa() { return Kernels().isa; }

const IsaKernels* KernelsFor(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(CpuIsa())) return nullptr;
  return Table(isa);
}

}  // namespace attnserve::kernels
