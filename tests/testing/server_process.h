// ServerProcess: the real attnd as a child process of a test, on 127.0.0.1
// with a port the kernel picks (port 0), for end-to-end and client tests.
//
// attnd is found through $ATTND_PATH (CTest sets it), else the compile-time
// default ATTND_DEFAULT_PATH (<build>/bin/attnd). It runs with
// --address=127.0.0.1:0 --port_file=<a fresh temporary file>
// --metrics_address=127.0.0.1:0 --metrics_port_file=<another> --lame_duck_s=0 plus the
// caller's flags (later flags win); Start() returns once attnd has written its
// bound port there, i.e. once it is serving.
//
// Thread-safety: the accessors are const and may be called from any thread;
// the destructor must not race with them. Ownership: the ServerProcess owns
// the child and its temporary directory; destroying it stops the child
// (SIGTERM, then SIGKILL after 10 s), reaps it and removes the directory.
// attnd's stdout and stderr are the test's own, so its log lands in the
// test's output.
#ifndef ATTNSERVE_TESTS_TESTING_SERVER_PROCESS_H_
#define ATTNSERVE_TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnserve::testing {

class ServerProcess {
 public:
  // Starts attnd with `extra_flags` appended to the address and port-file
  // flags, and waits (at most 20 s) for it to report its port.
  // FAILED_PRECONDITION if attnd is missing or exits before reporting its
  // port (the message says how it exited); DEADLINE_EXCEEDED if it does not
  // report in time (it is then killed); INTERNAL on a system-call failure.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      std::vector<std::string> extra_flags = {});

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess();

  // The port attnd bound (1..65535).
  int port() const { return port_; }
  // "127.0.0.1:PORT", a target for client::Client::Create.
  std::string address() const;
  // The port of attnd's /metrics listener; 0 when extra_flags disabled it.
  int metrics_port() const { return metrics_port_; }
  // The child's process id (for tests that signal it themselves).
  pid_t pid() const { return pid_; }

  // OK while attnd runs; FAILED_PRECONDITION saying how it ended once it has
  // exited or been killed (a sanitizer build's attnd exits at its first
  // report). Does not reap the child (the destructor still does), so it may
  // be called any number of times, from any thread: a test that polls attnd
  // checks it to fail at once instead of waiting out its polls.
  absl::Status CheckAlive() const;

  // Sends SIGTERM and waits (without limit) for attnd to exit. OK when it
  // exited with status 0, else FAILED_PRECONDITION saying how it ended.
  // Call at most once; the destructor then only removes the directory.
  absl::Status Terminate();

 private:
  ServerProcess(pid_t pid, int port, int metrics_port, std::string temp_dir)
      : pid_(pid), port_(port), metrics_port_(metrics_port), temp_dir_(std::move(temp_dir)) {}

  const pid_t pid_;
  const int port_;
  const int metrics_port_;
  const std::string temp_dir_;  // holds the port file; removed on destruction
};

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_SERVER_PROCESS_H_
