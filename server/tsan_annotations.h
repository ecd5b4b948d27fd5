// ThreadSanitizer's view of gRPC's callback API. A reactor is handed from
// the thread that starts an operation on it (StartRead, StartWrite, Finish:
// ours, or the batcher's) to the gRPC thread that runs the operation's
// completion (OnReadDone, OnWriteDone, OnDone). The hand-over happens inside
// libgrpc, which Debian ships uninstrumented, so TSan sees the reactor's
// members written on one thread and read on the other with nothing between
// them, and halts attnd. These two calls mark the hand-over on the reactor's
// address: release before an operation starts, acquire as its completion
// begins. Real races (a member touched by two threads outside that order)
// are still reported. Outside TSan builds they compile to nothing.
//
// Thread-safety: stateless.
#ifndef ATTNSERVE_SERVER_TSAN_ANNOTATIONS_H_
#define ATTNSERVE_SERVER_TSAN_ANNOTATIONS_H_

#if defined(__SANITIZE_THREAD__)
#define ATTN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ATTN_TSAN 1
#endif
#endif

#ifdef ATTN_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace attnserve::server {

// Before StartRead, StartWrite or Finish on `reactor`.
inline void HandOverToGrpc([[maybe_unused]] const void* reactor) {
#ifdef ATTN_TSAN
  __tsan_release(const_cast<void*>(reactor));
#endif
}

// First thing in OnReadDone, OnWriteDone and OnDone of `reactor`.
inline void TakeOverFromGrpc([[maybe_unused]] const void* reactor) {
#ifdef ATTN_TSAN
  __tsan_acquire(const_cast<void*>(reactor));
#endif
}

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_TSAN_ANNOTATIONS_H_
