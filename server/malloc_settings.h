// UseAttndMallocSettings: glibc malloc as attnd runs it, for attnd's main()
// and for the benchmarks that should see the service's heap
// (attention_bench, variants_bench). Header-only, so that a benchmark that
// links only the kernels can use it too.
//
// Batches allocate and free megabyte tensors at a high rate. Three settings:
// - No mmap below 256 MiB: mmap/munmap and their page faults were a fifth of
//   the server's CPU under load.
// - One arena for every thread. A call's message bytes are allocated on
//   whichever gRPC thread parses it and freed on another; with glibc's
//   default of 8 arenas a core, each thread's arena gave back its own top
//   and the next call, on another thread, faulted 12 MiB in again (a fault
//   is 10-20 us in this project's VMs): an Attend at S=2048 took 1.76x its
//   compute time in the server instead of 1.08x, and under load (4 clients,
//   S=1024) one arena served 13-27% more calls a second with 27-35% less CPU
//   a call and a third less RSS (docs/PERFORMANCE.md, "One malloc arena").
//   Requests make few, large allocations (small ones go through each
//   thread's tcache), so the shared lock did not show. MALLOC_ARENA_MAX or a
//   glibc.malloc.arena_max tunable in the environment overrides it.
// - The heap's free top kept up to 256 MiB with one arena: attnd's
//   IdleTrimmer (server/memory_trim.h) calls malloc_trim once a burst is
//   over, which returns it (issue 12, finding 8). glibc's malloc_trim never
//   shrinks the top of a thread's arena, so where the environment asks for
//   more arenas the threshold itself must return it: 16 MiB then, at the
//   price of refaulting calls whose blocks cross it.
//
// Call once at the start of main(), before any thread allocates.
#ifndef ATTNSERVE_SERVER_MALLOC_SETTINGS_H_
#define ATTNSERVE_SERVER_MALLOC_SETTINGS_H_

#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace attnserve::server {

inline void UseAttndMallocSettings() {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const bool arenas_from_environment =
      std::getenv("MALLOC_ARENA_MAX") != nullptr ||
      (tunables != nullptr && std::strstr(tunables, "arena_max") != nullptr);
  if (!arenas_from_environment) mallopt(M_ARENA_MAX, 1);
  mallopt(M_TRIM_THRESHOLD, arenas_from_environment ? 16 << 20 : 256 << 20);
}

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_MALLOC_SETTINGS_H_
