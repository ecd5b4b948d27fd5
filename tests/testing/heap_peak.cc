#include "tests/testing/heap_peak.h"

#include <malloc.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "tests/testing/sanitizers.h"

#define ATTN_HEAP_PEAK_AVAILABLE (!ATTN_SANITIZER_OWNS_MALLOC)

namespace attnserve::testing {
namespace {

// Zero-initialised before any constructor runs, so allocations made during
// static initialisation are counted too.
std::atomic<int64_t> live_bytes{0};
std::atomic<int64_t> peak_bytes{0};

}  // namespace

namespace heap_peak_internal {

int64_t SizeOf(void* block);

void Added(void* block) {
  if (block == nullptr) return;
  const int64_t bytes = SizeOf(block);
  const int64_t now = live_bytes.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  int64_t peak = peak_bytes.load(std::memory_order_relaxed);
  while (now > peak &&
         !peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void Removed(int64_t bytes) { live_bytes.fetch_sub(bytes, std::memory_order_relaxed); }

int64_t SizeOf(void* block) {
  return block == nullptr ? 0 : static_cast<int64_t>(malloc_usable_size(block));
}

}  // namespace heap_peak_internal

bool HeapPeakScope::Available() { return ATTN_HEAP_PEAK_AVAILABLE != 0; }

HeapPeakScope::HeapPeakScope() : baseline_(live_bytes.load()) { peak_bytes.store(baseline_); }

int64_t HeapPeakScope::PeakGrowth() const { return peak_bytes.load() - baseline_; }

int64_t HeapPeakScope::Growth() const { return live_bytes.load() - baseline_; }

}  // namespace attnserve::testing

#if ATTN_HEAP_PEAK_AVAILABLE
// glibc's own entry points, which the wrappers forward to (glibc supports
// replacing malloc this way: "Replacing malloc" in its manual).
extern "C" {
void* __libc_malloc(size_t size);
void* __libc_calloc(size_t count, size_t size);
void* __libc_realloc(void* block, size_t size);
void __libc_free(void* block);
void* __libc_memalign(size_t alignment, size_t size);
void* __libc_valloc(size_t size);
void* __libc_pvalloc(size_t size);
}

namespace counting = attnserve::testing::heap_peak_internal;

extern "C" void* malloc(size_t size) noexcept {
  void* block = __libc_malloc(size);
  counting::Added(block);
  return block;
}

extern "C" void* calloc(size_t count, size_t size) noexcept {
  void* block = __libc_calloc(count, size);
  counting::Added(block);
  return block;
}

extern "C" void* realloc(void* block, size_t size) noexcept {
  // Counted as free + malloc; the old block's size is read before it may move.
  const int64_t old_size = counting::SizeOf(block);
  void* moved = __libc_realloc(block, size);
  if (moved == nullptr && size != 0) return nullptr;  // The old block is untouched.
  counting::Removed(old_size);
  counting::Added(moved);
  return moved;
}

extern "C" void free(void* block) noexcept {
  counting::Removed(counting::SizeOf(block));
  __libc_free(block);
}

extern "C" void* memalign(size_t alignment, size_t size) noexcept {
  void* block = __libc_memalign(alignment, size);
  counting::Added(block);
  return block;
}

extern "C" void* aligned_alloc(size_t alignment, size_t size) noexcept {
  return memalign(alignment, size);
}

extern "C" int posix_memalign(void** result, size_t alignment, size_t size) noexcept {
  if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* block = memalign(alignment, size);
  if (block == nullptr) return ENOMEM;
  *result = block;
  return 0;
}

extern "C" void* valloc(size_t size) noexcept {
  void* block = __libc_valloc(size);
  counting::Added(block);
  return block;
}

extern "C" void* pvalloc(size_t size) noexcept {
  void* block = __libc_pvalloc(size);
  counting::Added(block);
  return block;
}
#endif  // ATTN_HEAP_PEAK_AVAILABLE
