// Whether this build runs under a sanitizer that owns malloc (AddressSanitizer
// or ThreadSanitizer), known at compile time, and how much slower it runs. The attnd of a sanitizer build
// is built the same way, so a test can tell that its measurements of the
// heap or of attnd's RSS do not mean what they mean with glibc's malloc:
// ASan keeps freed blocks in its quarantine (256 MiB by default) and its own
// size-class pools, and neither returns memory on malloc_trim.
//
// Thread-safety: constants only.
#ifndef ATTNSERVE_TESTS_TESTING_SANITIZERS_H_
#define ATTNSERVE_TESTS_TESTING_SANITIZERS_H_

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ATTN_SANITIZER_OWNS_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ATTN_SANITIZER_OWNS_MALLOC 1
#endif
#endif
#ifndef ATTN_SANITIZER_OWNS_MALLOC
#define ATTN_SANITIZER_OWNS_MALLOC 0
#endif

namespace attnserve::testing {

inline constexpr bool kSanitizerOwnsMalloc = ATTN_SANITIZER_OWNS_MALLOC != 0;

// How much longer a test's waits may take in a sanitizer build (ASan runs
// code about 2x slower, TSan 5-15x, and attnd's start and exit longer
// still): a bound on elapsed time that pins a bug (a 2 s poll, a missed
// cancel) is multiplied by this, so a slow build fails only on the bug.
inline constexpr int kSanitizerTimeFactor = kSanitizerOwnsMalloc ? 5 : 1;

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_SANITIZERS_H_
