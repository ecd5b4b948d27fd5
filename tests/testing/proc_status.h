// A process's memory as Linux reports it in /proc/PID/status, for the tests
// that bound attnd's memory (VmRSS now, VmHWM its peak), and the reset of
// that peak (/proc/PID/clear_refs), so that a test measures one phase.
//
// Thread-safety: pure functions over /proc.
#ifndef ATTNSERVE_TESTS_TESTING_PROC_STATUS_H_
#define ATTNSERVE_TESTS_TESTING_PROC_STATUS_H_

#include <sys/types.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnserve::testing {

// The field `name` ("VmRSS", "VmHWM", ...) of /proc/`pid`/status in bytes.
// NOT_FOUND when the process or the field does not exist.
absl::StatusOr<int64_t> ProcStatusBytes(pid_t pid, absl::string_view name);

// Resets the process's VmHWM to its current VmRSS (writes "5" to
// /proc/`pid`/clear_refs; the test's own children only).
absl::Status ResetPeakRss(pid_t pid);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_PROC_STATUS_H_
