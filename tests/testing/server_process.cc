#include "tests/testing/server_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#ifndef ATTND_DEFAULT_PATH
#error "ATTND_DEFAULT_PATH must be defined (tests/testing/CMakeLists.txt)"
#endif

namespace attnserve::testing {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(20);
constexpr absl::Duration kStopTimeout = absl::Seconds(10);
constexpr absl::Duration kPollInterval = absl::Milliseconds(10);

std::string AttndPath() {
  const char* path = std::getenv("ATTND_PATH");
  return path != nullptr && *path != '\0' ? path : ATTND_DEFAULT_PATH;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("was killed by signal ", WTERMSIG(status), " (",
                        strsignal(WTERMSIG(status)), ")");
  }
  return absl::StrCat("stopped with wait status ", status);
}

// waitpid without blocking; true (and `status`) once the child has ended.
bool Reaped(pid_t pid, int& status) {
  for (;;) {
    const pid_t result = waitpid(pid, &status, WNOHANG);
    if (result == pid) return true;
    if (result == 0) return false;
    if (errno == EINTR) continue;
    // ECHILD: someone else reaped it; it is gone either way.
    status = 0;
    return true;
  }
}

void KillAndReap(pid_t pid) {
  kill(pid, SIGKILL);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

// The port in `path` once attnd has written it completely: a decimal number
// followed by a newline, or, without the newline, the same text on two polls
// in a row (so a half-written "50" of "50051" is never taken).
std::optional<int> ReadPort(const std::string& path, std::string& previous) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  const std::string content = text.str();
  const bool complete = !content.empty() && content.back() == '\n';
  const bool stable = !content.empty() && content == previous;
  previous = content;
  int port = 0;
  if ((complete || stable) && absl::SimpleAtoi(absl::StripAsciiWhitespace(content), &port) &&
      port > 0 && port < 65536) {
    return port;
  }
  return std::nullopt;
}

std::string TempRoot() {
  const char* dir = std::getenv("TMPDIR");
  return dir != nullptr && *dir != '\0' ? dir : "/tmp";
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    std::vector<std::string> extra_flags) {
  const std::string path = AttndPath();
  if (access(path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("attnd not found or not executable at ", path, " (", std::strerror(errno),
                     "); set ATTND_PATH or build the attnd target"));
  }
  std::string dir_template = TempRoot() + "/attnd_test_XXXXXX";
  if (mkdtemp(dir_template.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp(", dir_template, "): ", std::strerror(errno)));
  }
  const std::string temp_dir = dir_template;
  const std::string port_file = temp_dir + "/port";
  const std::string metrics_port_file = temp_dir + "/metrics_port";
  const auto remove_temp_dir = [&temp_dir] {
    std::error_code ignored;
    std::filesystem::remove_all(temp_dir, ignored);
  };

  std::vector<std::string> args = {path, "--address=127.0.0.1:0",
                                   absl::StrCat("--port_file=", port_file),
                                   "--metrics_address=127.0.0.1:0",
                                   absl::StrCat("--metrics_port_file=", metrics_port_file),
                                   // No lame duck (a test's own flag may set one): a test
                                   // stops its server at once.
                                   "--lame_duck_s=0"};
  for (std::string& flag : extra_flags) args.push_back(std::move(flag));
  // argv is built before fork: between fork and exec the child may only make
  // async-signal-safe calls (the test may have gRPC threads running).
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int error = errno;
    remove_temp_dir();
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(error)));
  }
  if (pid == 0) {
    // If the test dies without running the destructor, take attnd with it:
    // an orphan holding the test's stdout would keep CTest waiting. (The
    // signal follows the forking thread; tests start servers on their main
    // thread.)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }

  const std::string command = absl::StrJoin(args, " ");
  const absl::Time deadline = absl::Now() + kStartTimeout;
  std::string previous;
  for (;;) {
    if (std::optional<int> port = ReadPort(port_file, previous)) {
      // attnd writes the metrics port file before the port file.
      std::string unused;
      const int metrics_port = ReadPort(metrics_port_file, unused).value_or(0);
      return std::unique_ptr<ServerProcess>(new ServerProcess(pid, *port, metrics_port, temp_dir));
    }
    int status = 0;
    if (Reaped(pid, status)) {
      remove_temp_dir();
      return absl::FailedPreconditionError(absl::StrCat(
          "attnd ", DescribeWaitStatus(status), " before writing its port file; command: ", command,
          " (its stderr is in the test log)"));
    }
    if (absl::Now() > deadline) {
      KillAndReap(pid);
      remove_temp_dir();
      return absl::DeadlineExceededError(
          absl::StrCat("attnd did not write its port to ", port_file, " within ",
                       absl::FormatDuration(kStartTimeout), "; killed it; command: ", command));
    }
    absl::SleepFor(kPollInterval);
  }
}

ServerProcess::~ServerProcess() {
  int status = 0;
  if (!Reaped(pid_, status)) {
    kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + kStopTimeout;
    bool gone = false;
    while (!(gone = Reaped(pid_, status)) && absl::Now() < deadline) absl::SleepFor(kPollInterval);
    if (!gone) {
      // Worth seeing in the log: attnd should drain promptly once idle.
      std::fprintf(stderr,
                   "ServerProcess: attnd (pid %d) still running %s after SIGTERM; killing it\n",
                   static_cast<int>(pid_), absl::FormatDuration(kStopTimeout).c_str());
      KillAndReap(pid_);
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(temp_dir_, ignored);
}

absl::Status ServerProcess::Terminate() {
  if (kill(pid_, SIGTERM) != 0) {
    return absl::InternalError(absl::StrCat("kill(", pid_, ", SIGTERM): ", strerror(errno)));
  }
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0) {
    if (errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitpid(", pid_, "): ", strerror(errno)));
    }
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("attnd ", DescribeWaitStatus(status), " after SIGTERM"));
}

absl::Status ServerProcess::CheckAlive() const {
  siginfo_t info{};
  // WNOWAIT: look without reaping, so the pid stays ours until the destructor.
  while (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitid(", pid_, "): ", strerror(errno)));
    }
  }
  if (info.si_pid == 0) return absl::OkStatus();
  const std::string how = info.si_code == CLD_EXITED
                              ? absl::StrCat("exited with status ", info.si_status)
                              : absl::StrCat("was killed by signal ", info.si_status, " (",
                                             strsignal(info.si_status), ")");
  return absl::FailedPreconditionError(absl::StrCat(
      "attnd (pid ", pid_, ") ", how, " while the test ran (its stderr is in the test log)"));
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

}  // namespace attnserve::testing
