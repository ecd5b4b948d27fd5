// Status propagation macros (Abseil 20220623 ships none).
//
// ATTN_RETURN_IF_ERROR(expr): returns the absl::Status of `expr` if not OK.
// ATTN_ASSIGN_OR_RETURN(lhs, expr): evaluates an absl::StatusOr, returns its
// status if not OK, else move-assigns its value to `lhs` (which may declare).
#ifndef ATTNSERVE_KERNELS_STATUS_MACROS_H_
#define ATTNSERVE_KERNELS_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ATTN_RETURN_IF_ERROR(expr)                     \
  do {                                                 \
    ::absl::Status attn_status_ = (expr);              \
    if (!attn_status_.ok()) return attn_status_;       \
  } while (0)

#define ATTN_STATUS_CONCAT_INNER_(a, b) a##b
#define ATTN_STATUS_CONCAT_(a, b) ATTN_STATUS_CONCAT_INNER_(a, b)

#define ATTN_ASSIGN_OR_RETURN(lhs, expr) \
  ATTN_ASSIGN_OR_RETURN_IMPL_(ATTN_STATUS_CONCAT_(attn_statusor_, __LINE__), lhs, expr)

#define ATTN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // ATTNSERVE_KERNELS_STATUS_MACROS_H_
