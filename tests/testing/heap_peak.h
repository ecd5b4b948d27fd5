// Measures the peak heap a piece of code uses, for the memory test of the
// fast engine and the bench's extra-memory counter.
//
// How: linking this file interposes the process's malloc family (malloc,
// calloc, realloc, free, posix_memalign, aligned_alloc, memalign, valloc,
// pvalloc) with wrappers that forward to glibc's __libc_* entry points and
// keep a process-wide count of live bytes (malloc_usable_size of each block)
// and its high-water mark. operator new, std::vector and oneDNN's scratchpads
// all allocate through malloc, so every heap byte of every thread is seen,
// however briefly it lives (a sampling thread would miss short peaks).
// Not counted: thread stacks and other direct mmap calls (OpenMP's pool is
// created once, before any measurement), and the allocator's own overhead.
//
// Under AddressSanitizer or ThreadSanitizer, whose runtimes own malloc, the
// wrappers are left out and Available() is false.
//
// Thread-safety: the counters are atomics; allocation from any thread is
// fine. Scopes measure the whole process, so nest or overlap them only when
// that is what you mean.
#ifndef ATTNSERVE_TESTS_TESTING_HEAP_PEAK_H_
#define ATTNSERVE_TESTS_TESTING_HEAP_PEAK_H_

#include <cstdint>

namespace attnserve::testing {

class HeapPeakScope {
 public:
  // Whether the malloc wrappers are linked in (false under sanitizers).
  static bool Available();

  // Starts a measurement: the live bytes now are the baseline, and the
  // high-water mark is reset to them.
  HeapPeakScope();
  HeapPeakScope(const HeapPeakScope&) = delete;
  HeapPeakScope& operator=(const HeapPeakScope&) = delete;

  // Highest live heap since construction, minus the baseline, in bytes.
  int64_t PeakGrowth() const;
  // Live heap now, minus the baseline (what the code kept), in bytes.
  int64_t Growth() const;

 private:
  int64_t baseline_;
};

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_HEAP_PEAK_H_
