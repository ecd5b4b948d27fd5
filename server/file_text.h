// ReadFileText: a whole small file (key, certificate, tokens) as a string,
// for files named by a flag. Thread-safe (no shared state).
#ifndef ATTNSERVE_SERVER_FILE_TEXT_H_
#define ATTNSERVE_SERVER_FILE_TEXT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnserve::server {

// The bytes of `path`. INVALID_ARGUMENT "<flag>: cannot read '<path>': <errno
// text>" when it cannot be opened or read.
absl::StatusOr<std::string> ReadFileText(const std::string& path, absl::string_view flag);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_FILE_TEXT_H_
