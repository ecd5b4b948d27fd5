// Fuzz target: the safetensors loader of --tensor_dir
// (server/tensor_store.h), on the input as a file's bytes. The file is an
// anonymous memory file read through its /proc/self/fd path, so the loader
// runs as at start-up (open, fstat, pread), with no disk writes.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "server/tensor_store.h"
#include "tests/fuzz/service_path.h"

namespace attnserve::fuzz {
namespace {

void Run(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  ATTN_FUZZ_CHECK(fd >= 0, "memfd_create works");
  ATTN_FUZZ_CHECK(ftruncate(fd, 0) == 0, "the memory file empties");
  for (size_t done = 0; done < size;) {
    const ssize_t wrote = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    ATTN_FUZZ_CHECK(wrote > 0, "the memory file takes the input");
    done += static_cast<size_t>(wrote);
  }
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);

  absl::StatusOr<std::vector<server::StoredTensor>> tensors = server::ReadSafetensorsFile(path);
  if (!tensors.ok()) {
    CheckError(tensors.status());
    return;
  }
  size_t bytes = 0;
  for (const server::StoredTensor& stored : *tensors) {
    const kernels::Tensor& tensor = stored.tensor;
    int64_t count = 1;
    for (int64_t d : tensor.shape()) count *= d;  // the loader checked the product
    ATTN_FUZZ_CHECK(count == tensor.size(), "a loaded tensor holds product(shape) values");
    bytes += static_cast<size_t>(tensor.size()) * (stored.dtype == "F32" ? 4 : 2);
  }
  ATTN_FUZZ_CHECK(bytes <= size, "the tensors fit in the file");
  // A store over them, and a lookup of each, as --tensor_dir would.
  server::TensorStore store(*std::move(tensors));
  for (const server::StoredTensor& stored : store.tensors()) {
    ATTN_FUZZ_CHECK(store.Find(stored.ref) == &stored, "every ref is found");
  }
}

}  // namespace
}  // namespace attnserve::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnserve::fuzz::Run(data, size);
  return 0;
}
