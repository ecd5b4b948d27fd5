#include "server/tensor_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace attnserve::server {
namespace {

using Json = nlohmann::json;

// The reference implementation's bound: a larger header is refused before it
// is read, so a corrupt length cannot make us allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr absl::string_view kSuffix = ".safetensors";
constexpr char kMetadataKey[] = "__metadata__";

static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4,
              "the dtype conversions assume IEEE-754 binary32 floats");

// One header entry, checked against the format's rules but not yet read.
struct Entry {
  std::string name;
  std::string dtype;
  int itemsize = 0;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Reads `path` with pread and keeps its size; closes on destruction.
class File {
 public:
  static absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int error = errno;
      const std::string text = absl::StrCat(path, ": cannot open: ", std::strerror(error));
      return error == ENOENT ? absl::NotFoundError(text) : absl::FailedPreconditionError(text);
    }
    struct stat info;
    if (::fstat(fd, &info) != 0) {
      const int error = errno;
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": cannot stat: ", std::strerror(error)));
    }
    return std::unique_ptr<File>(new File(fd, path, static_cast<uint64_t>(info.st_size)));
  }

  ~File() { ::close(fd_); }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint64_t size() const { return size_; }

  // Reads exactly `length` bytes at `offset` into `out`.
  absl::Status ReadAt(uint64_t offset, uint64_t length, void* out) const {
    char* dst = static_cast<char*>(out);
    while (length > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, uint64_t{1} << 30));
      const ssize_t got = ::pread(fd_, dst, chunk, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        return absl::FailedPreconditionError(
            absl::StrCat(path_, ": cannot read ", length, " bytes at offset ", offset, ": ",
                         got == 0 ? "unexpected end of file" : std::strerror(errno)));
      }
      dst += got;
      offset += static_cast<uint64_t>(got);
      length -= static_cast<uint64_t>(got);
    }
    return absl::OkStatus();
  }

 private:
  File(int fd, std::string path, uint64_t size) : fd_(fd), path_(std::move(path)), size_(size) {}

  const int fd_;
  const std::string path_;
  const uint64_t size_;
};

absl::Status HeaderError(absl::string_view path, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": header: ", rule));
}

absl::Status TensorError(absl::string_view path, absl::string_view name, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", rule));
}

int ItemSize(absl::string_view dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  return 0;
}

// One tensor's entry of the header, checked on its own.
absl::StatusOr<Entry> ParseEntry(absl::string_view path, const std::string& name,
                                 const Json& value) {
  if (name.empty()) return HeaderError(path, "a tensor name is empty");
  if (!value.is_object()) {
    return TensorError(path, name,
                       "expected an object {dtype, shape, data_offsets}, got " +
                           std::string(value.type_name()));
  }
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return TensorError(path, name,
                         absl::StrCat("unknown key '", key, "' (known: dtype, shape, data_offsets)"));
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) return TensorError(path, name, absl::StrCat("missing '", key, "'"));
  }
  Entry entry;
  entry.name = name;
  const Json& dtype = value["dtype"];
  if (!dtype.is_string()) return TensorError(path, name, "dtype: expected a string");
  entry.dtype = dtype.get<std::string>();
  entry.itemsize = ItemSize(entry.dtype);
  if (entry.itemsize == 0) {
    return TensorError(path, name,
                       absl::StrCat("dtype ", entry.dtype,
                                    " is not supported (F32, F16 and BF16 are; convert the file)"));
  }
  const Json& shape = value["shape"];
  if (!shape.is_array()) return TensorError(path, name, "shape: expected an array of integers");
  uint64_t bytes = static_cast<uint64_t>(entry.itemsize);
  for (const Json& dim : shape) {
    // nlohmann parses every non-negative integer literal as unsigned, so a
    // negative, fractional or oversized dimension is some other type.
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(path, name,
                         absl::StrCat("shape ", shape.dump(),
                                      ": every dimension must be an integer >= 0"));
    }
    const uint64_t d = dim.get<uint64_t>();
    if (__builtin_mul_overflow(bytes, d, &bytes)) {
      return TensorError(path, name, absl::StrCat("shape ", shape.dump(), " overflows 64 bits"));
    }
    entry.shape.push_back(static_cast<int64_t>(d));
  }
  const Json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets: expected [begin, end] of integers >= 0, got ",
                                    offsets.dump()));
  }
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  if (entry.end < entry.begin) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets ", offsets.dump(), ": end < begin"));
  }
  if (entry.end - entry.begin != bytes) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets ", offsets.dump(), " hold ",
                                    entry.end - entry.begin, " bytes, but dtype ", entry.dtype,
                                    " and shape ", shape.dump(), " need ", bytes));
  }
  return entry;
}

// Parses the JSON header; a name that appears twice is an error (nlohmann
// would keep the last one silently).
absl::StatusOr<Json> ParseHeaderJson(absl::string_view path, const std::string& text) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const Json::parser_callback_t track_keys = [&](int /*depth*/, Json::parse_event_t event,
                                                 Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case Json::parse_event_t::object_end: open_objects.pop_back(); break;
      case Json::parse_event_t::key:
        if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      case Json::parse_event_t::array_start:
      case Json::parse_event_t::array_end:
      case Json::parse_event_t::value: break;
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(text, track_keys);
  } catch (const Json::exception& e) {
    return HeaderError(path, absl::StrCat("not valid JSON (", e.what(), ")"));
  }
  if (!duplicate.empty()) return HeaderError(path, absl::StrCat("key '", duplicate, "' repeats"));
  if (!header.is_object()) {
    return HeaderError(path, absl::StrCat("expected a JSON object, got ", header.type_name()));
  }
  return header;
}

// The checked header entries of `file`, sorted by offset; `data_start` is
// where the data region begins.
absl::StatusOr<std::vector<Entry>> ReadHeader(absl::string_view path, const File& file,
                                              uint64_t* data_start) {
  if (file.size() < 8) {
    return HeaderError(path, absl::StrCat("file is ", file.size(),
                                          " bytes; a safetensors file starts with an 8-byte "
                                          "header length (truncated or not safetensors)"));
  }
  unsigned char length_bytes[8];
  ATTN_RETURN_IF_ERROR(file.ReadAt(0, 8, length_bytes));
  uint64_t length = 0;
  for (int b = 7; b >= 0; --b) length = (length << 8) | length_bytes[b];
  if (length > kMaxHeaderBytes) {
    return HeaderError(path, absl::StrCat("length ", length, " exceeds the limit of ",
                                          kMaxHeaderBytes, " bytes (corrupt or not safetensors)"));
  }
  if (length > file.size() - 8) {
    return HeaderError(path, absl::StrCat("length ", length, " runs past the end of the file (",
                                          file.size(), " bytes; truncated?)"));
  }
  std::string text(static_cast<size_t>(length), '\0');
  ATTN_RETURN_IF_ERROR(file.ReadAt(8, length, text.data()));
  ATTN_ASSIGN_OR_RETURN(const Json header, ParseHeaderJson(path, text));

  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object()) return HeaderError(path, "__metadata__: expected an object");
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) {
          return HeaderError(path,
                             absl::StrCat("__metadata__.", key, ": expected a string value"));
        }
      }
      continue;
    }
    ATTN_ASSIGN_OR_RETURN(Entry entry, ParseEntry(path, name, value));
    entries.push_back(std::move(entry));
  }

  // The byte ranges must tile the data region: the reference reader refuses
  // gaps and overlaps too, and a size mismatch means truncation or garbage.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  *data_start = 8 + length;
  const uint64_t data_size = file.size() - *data_start;
  uint64_t expected = 0;
  const Entry* previous = nullptr;
  for (const Entry& entry : entries) {
    if (entry.begin < expected) {
      return TensorError(path, entry.name,
                         absl::StrCat("data_offsets [", entry.begin, ",", entry.end,
                                      "] overlap tensor '", previous->name, "' (ends at ",
                                      expected, ")"));
    }
    if (entry.begin > expected) {
      return TensorError(path, entry.name,
                         absl::StrCat("data_offsets [", entry.begin, ",", entry.end,
                                      "] leave a gap: the previous tensor ends at ", expected));
    }
    if (entry.end > data_size) {
      return TensorError(path, entry.name,
                         absl::StrCat("data_offsets [", entry.begin, ",", entry.end,
                                      "] run past the data region of ", data_size,
                                      " bytes (file truncated?)"));
    }
    expected = entry.end;
    previous = &entry;
  }
  if (expected != data_size) {
    return HeaderError(path, absl::StrCat("the tensors hold ", expected,
                                          " bytes but the data region has ", data_size,
                                          " (trailing bytes after the last tensor)"));
  }
  return entries;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits = 0;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN keeping its payload
  } else if (exponent != 0) {
    bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  } else {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    float value = std::ldexp(static_cast<float>(mantissa), -24);
    std::memcpy(&bits, &value, 4);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

float BFloat16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// The values of `entry` (little-endian in the file) as float32.
absl::StatusOr<std::vector<float>> ReadValues(const File& file, uint64_t data_start,
                                              const Entry& entry) {
  const uint64_t bytes = entry.end - entry.begin;
  const size_t count = static_cast<size_t>(bytes / static_cast<uint64_t>(entry.itemsize));
  std::vector<float> values(count);
  if (entry.itemsize == 4) {
    ATTN_RETURN_IF_ERROR(file.ReadAt(data_start + entry.begin, bytes, values.data()));
    if constexpr (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__) {
      for (float& value : values) {
        uint32_t word;
        std::memcpy(&word, &value, 4);
        word = __builtin_bswap32(word);
        std::memcpy(&value, &word, 4);
      }
    }
    return values;
  }
  std::vector<unsigned char> raw(static_cast<size_t>(bytes));
  ATTN_RETURN_IF_ERROR(file.ReadAt(data_start + entry.begin, bytes, raw.data()));
  const bool bf16 = entry.dtype == "BF16";
  for (size_t i = 0; i < count; ++i) {
    const uint16_t word = static_cast<uint16_t>(raw[2 * i] | (raw[2 * i + 1] << 8));
    values[i] = bf16 ? BFloat16ToFloat(word) : HalfToFloat(word);
  }
  return values;
}

}  // namespace

absl::StatusOr<std::vector<StoredTensor>> ReadSafetensorsFile(const std::string& path) {
  ATTN_ASSIGN_OR_RETURN(const std::unique_ptr<File> file, File::Open(path));
  uint64_t data_start = 0;
  ATTN_ASSIGN_OR_RETURN(const std::vector<Entry> entries, ReadHeader(path, *file, &data_start));
  std::string stem = std::filesystem::path(path).filename().string();
  if (absl::EndsWith(stem, kSuffix)) stem.resize(stem.size() - kSuffix.size());

  std::vector<StoredTensor> tensors;
  tensors.reserve(entries.size());
  for (const Entry& entry : entries) {
    ATTN_ASSIGN_OR_RETURN(std::vector<float> values, ReadValues(*file, data_start, entry));
    tensors.push_back(StoredTensor{absl::StrCat(stem, "/", entry.name), entry.dtype,
                                   kernels::Tensor(entry.shape, std::move(values))});
  }
  return tensors;
}

TensorStore::TensorStore(std::vector<StoredTensor> tensors) : tensors_(std::move(tensors)) {
  std::sort(tensors_.begin(), tensors_.end(),
            [](const StoredTensor& a, const StoredTensor& b) { return a.ref < b.ref; });
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].ref, i);
}

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::Load(const std::string& dir,
                                                               int64_t max_elements) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::file_status status = fs::status(dir, error);
  if (error && error != std::errc::no_such_file_or_directory) {
    return absl::FailedPreconditionError(
        absl::StrCat("--tensor_dir: cannot access '", dir, "': ", error.message()));
  }
  if (!fs::exists(status)) {
    return absl::NotFoundError(absl::StrCat("--tensor_dir: '", dir, "' does not exist"));
  }
  if (!fs::is_directory(status)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--tensor_dir: '", dir, "' is not a directory"));
  }
  std::vector<std::string> paths;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (!absl::EndsWith(name, kSuffix)) continue;
    if (name.size() == kSuffix.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tensor_dir: ", it->path().string(), ": the file name has an empty stem (refs are "
          "'<stem>/<tensor>')"));
    }
    std::error_code type_error;
    if (fs::is_regular_file(it->path(), type_error)) paths.push_back(it->path().string());
  }
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("--tensor_dir: cannot list '", dir, "': ", error.message()));
  }
  std::sort(paths.begin(), paths.end());  // deterministic order of errors and loading

  std::vector<StoredTensor> tensors;
  for (const std::string& path : paths) {
    absl::StatusOr<std::vector<StoredTensor>> file_tensors = ReadSafetensorsFile(path);
    if (!file_tensors.ok()) {
      return absl::Status(file_tensors.status().code(),
                          absl::StrCat("--tensor_dir: ", file_tensors.status().message()));
    }
    for (StoredTensor& tensor : *file_tensors) {
      if (tensor.tensor.size() > max_elements) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--tensor_dir: ", path, ": tensor '", tensor.ref, "' has ", tensor.tensor.size(),
            " elements, more than --max_elements=", max_elements, " (no request could use it)"));
      }
      tensors.push_back(std::move(tensor));
    }
  }
  return std::make_unique<TensorStore>(std::move(tensors));
}

const StoredTensor* TensorStore::Find(absl::string_view ref) const {
  const auto it = index_.find(ref);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace attnserve::server
