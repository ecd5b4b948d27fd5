// TensorStore and ReadSafetensorsFile: valid F32/F16/BF16 files (values
// checked bit for bit, subnormals, signed zeros, infinities and NaN
// included), the directory rules, and every header rule broken once.
//
// Files are written here byte by byte (8-byte little-endian length, header
// text verbatim, data), so a test can break any rule on purpose.
#include "server/tensor_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string LittleEndian64(uint64_t value) {
  std::string bytes;
  for (int b = 0; b < 8; ++b) bytes.push_back(static_cast<char>((value >> (8 * b)) & 0xff));
  return bytes;
}

std::string F32Bytes(const std::vector<float>& values) {
  std::string bytes;
  for (float value : values) {
    uint32_t word = 0;
    std::memcpy(&word, &value, 4);
    for (int b = 0; b < 4; ++b) bytes.push_back(static_cast<char>((word >> (8 * b)) & 0xff));
  }
  return bytes;
}

std::string Words16(const std::vector<uint16_t>& words) {
  std::string bytes;
  for (uint16_t word : words) {
    bytes.push_back(static_cast<char>(word & 0xff));
    bytes.push_back(static_cast<char>(word >> 8));
  }
  return bytes;
}

uint32_t Bits(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, 4);
  return bits;
}

// A fresh directory under $TEST_TMPDIR or /tmp, removed with the fixture.
class TensorStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/tensor_store_XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `bytes` to <dir>/<name> and returns the path.
  std::string WriteRaw(const std::string& name, const std::string& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  // A safetensors file: the length of `header`, `header`, `data`.
  std::string Write(const std::string& name, const std::string& header, const std::string& data) {
    return WriteRaw(name, LittleEndian64(header.size()) + header + data);
  }

  std::string dir_;
};

TEST_F(TensorStoreTest, ReadsF32WithItsShapeAndRefUnderTheFileStem) {
  const std::string path =
      Write("weights.safetensors",
            R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})",
            F32Bytes({1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f}));
  absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_EQ((*tensors)[0].ref, "weights/w");
  EXPECT_EQ((*tensors)[0].dtype, "F32");
  EXPECT_THAT((*tensors)[0].tensor.shape(), ElementsAre(2, 3));
  EXPECT_THAT((*tensors)[0].tensor.values(), ElementsAre(1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f));
}

TEST_F(TensorStoreTest, WidensF16ExactlyIncludingSubnormalsAndSpecials) {
  const std::vector<uint16_t> words = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400,
                                       0x8000, 0x7C00, 0xFC00, 0x7E00, 0x3555};
  const std::string path = Write(
      "half.safetensors",
      absl::StrCat(R"({"h":{"dtype":"F16","shape":[11],"data_offsets":[0,)", 2 * words.size(),
                   "]}}"),
      Words16(words));
  absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  const absl::Span<const float> v = (*tensors)[0].tensor.values();
  ASSERT_EQ(v.size(), words.size());
  EXPECT_EQ((*tensors)[0].dtype, "F16");
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  EXPECT_EQ(v[2], 65504.0f);                     // largest finite half
  EXPECT_EQ(v[3], std::ldexp(1.0f, -24));        // smallest subnormal half
  EXPECT_EQ(v[4], std::ldexp(1023.0f, -24));     // largest subnormal half
  EXPECT_EQ(v[5], std::ldexp(1.0f, -14));        // smallest normal half
  EXPECT_EQ(Bits(v[6]), 0x80000000u);            // -0 keeps its sign
  EXPECT_EQ(v[7], std::numeric_limits<float>::infinity());
  EXPECT_EQ(v[8], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(v[9]));
  EXPECT_EQ(v[10], 1365.0f / 4096.0f);           // 0x3555 = 1.0101010101b * 2^-2
}

TEST_F(TensorStoreTest, WidensBF16ExactlyIncludingSubnormalsAndSpecials) {
  const std::vector<uint16_t> words = {0x3F80, 0xC040, 0x0001, 0x8000, 0x7F80, 0x7FC0, 0x3EAB};
  const std::string path = Write(
      "bf.safetensors",
      absl::StrCat(R"({"b":{"dtype":"BF16","shape":[7,1],"data_offsets":[0,14]}})"),
      Words16(words));
  absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  const absl::Span<const float> v = (*tensors)[0].tensor.values();
  ASSERT_EQ(v.size(), words.size());
  EXPECT_THAT((*tensors)[0].tensor.shape(), ElementsAre(7, 1));
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -3.0f);
  EXPECT_EQ(v[2], std::ldexp(1.0f, -133));  // a float32 subnormal, kept
  EXPECT_EQ(Bits(v[3]), 0x80000000u);
  EXPECT_EQ(v[4], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(v[5]));
  EXPECT_EQ(v[6], 171.0f / 512.0f);  // 0x3EAB = 1.0101011b * 2^-2
}

TEST_F(TensorStoreTest, AcceptsMetadataPaddingScalarsAndEmptyTensors) {
  // Keys out of offset order, the header padded with spaces as writers do
  // for alignment, a rank-0 scalar and a zero-sized tensor.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"z":{"dtype":"F32","shape":[0,4],"data_offsets":[12,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}      )";
  const std::string path = Write("mixed.safetensors", header, F32Bytes({9.0f, 1.0f, 2.0f}));
  absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 3u);
  EXPECT_EQ((*tensors)[0].ref, "mixed/s");
  EXPECT_TRUE((*tensors)[0].tensor.shape().empty());
  EXPECT_THAT((*tensors)[0].tensor.values(), ElementsAre(9.0f));
  EXPECT_EQ((*tensors)[1].ref, "mixed/a");
  EXPECT_THAT((*tensors)[1].tensor.values(), ElementsAre(1.0f, 2.0f));
  EXPECT_EQ((*tensors)[2].ref, "mixed/z");
  EXPECT_THAT((*tensors)[2].tensor.shape(), ElementsAre(0, 4));
  EXPECT_EQ((*tensors)[2].tensor.size(), 0);
}

TEST_F(TensorStoreTest, LoadTakesEverySafetensorsFileOfTheDirectoryOnly) {
  Write("b.safetensors", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
        F32Bytes({2.0f}));
  Write("a.safetensors",
        R"({"y.weight":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},)"
        R"("x":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
        Words16({0x3C00}) + F32Bytes({3.0f}));
  WriteRaw("notes.txt", "not a tensor file");
  WriteRaw("c.safetensors.bak", "garbage");
  fs::create_directory(dir_ + "/sub.safetensors");  // a directory, not a file: skipped
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Load(dir_, 1000);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<std::string> refs;
  for (const StoredTensor& t : (*store)->tensors()) refs.push_back(t.ref);
  EXPECT_THAT(refs, ElementsAre("a/x", "a/y.weight", "b/x"));
  ASSERT_NE((*store)->Find("b/x"), nullptr);
  EXPECT_THAT((*store)->Find("b/x")->tensor.values(), ElementsAre(2.0f));
  EXPECT_THAT((*store)->Find("a/y.weight")->tensor.values(), ElementsAre(1.0f));
  EXPECT_EQ((*store)->Find("a/y.weight")->dtype, "F16");
  EXPECT_EQ((*store)->Find("x"), nullptr);
  EXPECT_EQ((*store)->Find("c/x"), nullptr);
}

TEST_F(TensorStoreTest, EmptyDirectoryGivesAnEmptyStore) {
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Load(dir_, 1000);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->tensors().empty());
}

TEST_F(TensorStoreTest, MissingOrNonDirectoryTensorDirIsAnError) {
  absl::StatusOr<std::unique_ptr<TensorStore>> store =
      TensorStore::Load(dir_ + "/missing", 1000);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.status().message(),
            absl::StrCat("--tensor_dir: '", dir_, "/missing' does not exist"));

  const std::string file = WriteRaw("plain", "x");
  store = TensorStore::Load(file, 1000);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.status().message(),
            absl::StrCat("--tensor_dir: '", file, "' is not a directory"));

  store = TensorStore::Load(file + "/below", 1000);  // a path through a file
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.status().message(),
            absl::StrCat("--tensor_dir: cannot access '", file, "/below': Not a directory"));
}

TEST_F(TensorStoreTest, TensorAboveMaxElementsStopsLoading) {
  Write("big.safetensors", R"({"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})",
        std::string(24, '\0'));
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Load(dir_, 5);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(store.status().message(),
              HasSubstr("big.safetensors: tensor 'big/t' has 6 elements, more than "
                        "--max_elements=5"));
  EXPECT_TRUE(TensorStore::Load(dir_, 6).ok());
}

TEST_F(TensorStoreTest, EmptyStemIsAnError) {
  Write(".safetensors", "{}", "");
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Load(dir_, 1000);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(store.status().message(), HasSubstr("the file name has an empty stem"));
}

TEST_F(TensorStoreTest, EveryTruncationOfAValidFileIsRefusedWithTheFileName) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]}})";
  const std::string bytes =
      LittleEndian64(header.size()) + header + F32Bytes({1, 2}) + Words16({1, 2, 3});
  ASSERT_TRUE(ReadSafetensorsFile(WriteRaw("whole.safetensors", bytes)).ok());
  for (size_t size = 0; size < bytes.size(); ++size) {
    const std::string path = WriteRaw("cut.safetensors", bytes.substr(0, size));
    absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument) << "size " << size;
    EXPECT_THAT(tensors.status().message(), HasSubstr(path)) << "size " << size;
  }
}

TEST_F(TensorStoreTest, DeeplyNestedHeaderIsRefusedWithoutExhaustingTheStack) {
  const int depth = 200000;
  const std::string path =
      Write("deep.safetensors", std::string(depth, '[') + std::string(depth, ']'), "");
  absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(), HasSubstr("header: expected a JSON object, got array"));
}

TEST_F(TensorStoreTest, RandomByteChangesAreLoadedOrRefusedNeverACrash) {
  const std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}})";
  const std::string bytes = LittleEndian64(header.size()) + header + std::string(20, '\x3c');
  constexpr uint32_t kSeed = 1234;
  std::printf("seed %u\n", kSeed);
  std::mt19937 rng(kSeed);
  int refused = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string changed = bytes;
    const int changes = 1 + static_cast<int>(rng() % 3);
    for (int c = 0; c < changes; ++c) {
      changed[rng() % changed.size()] = static_cast<char>(rng() % 256);
    }
    absl::StatusOr<std::vector<StoredTensor>> tensors =
        ReadSafetensorsFile(WriteRaw("fuzz.safetensors", changed));
    if (!tensors.ok()) {
      ++refused;
      ASSERT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument)
          << "trial " << trial << ": " << tensors.status();
      continue;
    }
    for (const StoredTensor& t : *tensors) {
      int64_t count = 1;
      for (int64_t d : t.tensor.shape()) count *= d;
      ASSERT_EQ(count, t.tensor.size()) << "trial " << trial << ": " << t.ref;
    }
  }
  // Most single-byte changes hit the header, where nearly every change breaks a rule.
  EXPECT_GT(refused, 250);
}

TEST_F(TensorStoreTest, LoadPrefixesErrorsWithTheFlag) {
  const std::string path = Write("bad.safetensors", "[]", "");
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Load(dir_, 1000);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.status().message(),
            absl::StrCat("--tensor_dir: ", path, ": header: expected a JSON object, got array"));
}

// One broken rule: a file (header text verbatim, `data_bytes` zero bytes of
// data, or `raw` replacing the whole file) and what the message must say.
struct Corruption {
  Corruption(const char* name_in, std::string header_in, size_t data_bytes_in,
             std::string expected_in, std::string raw_in = "")
      : name(name_in),
        header(std::move(header_in)),
        data_bytes(data_bytes_in),
        expected(std::move(expected_in)),
        raw(std::move(raw_in)) {}

  const char* name;
  std::string header;
  size_t data_bytes;
  std::string expected;
  std::string raw;  // when set, the whole file
};

class CorruptFileTest : public TensorStoreTest,
                        public ::testing::WithParamInterface<Corruption> {};

TEST_P(CorruptFileTest, IsInvalidArgumentNamingFileTensorAndRule) {
  const Corruption& c = GetParam();
  const std::string path =
      c.raw.empty() ? Write("corrupt.safetensors", c.header, std::string(c.data_bytes, '\0'))
                    : WriteRaw("corrupt.safetensors", c.raw);
  absl::StatusOr<std::vector<StoredTensor>> tensors = ReadSafetensorsFile(path);
  ASSERT_FALSE(tensors.ok());
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument) << tensors.status();
  EXPECT_THAT(tensors.status().message(), HasSubstr(path + ": "));
  EXPECT_THAT(tensors.status().message(), HasSubstr(c.expected));
}

std::string T(const std::string& body) { return absl::StrCat(R"({"t":)", body, "}"); }

INSTANTIATE_TEST_SUITE_P(
    EveryRule, CorruptFileTest,
    ::testing::Values(
        Corruption{"ShorterThanTheLength", "", 0, "header: file is 3 bytes", "abc"},
        Corruption{"HeaderAboveTheLimit", "", 0,
                   "header: length 100000001 exceeds the limit of 100000000 bytes",
                   LittleEndian64(100'000'001) + "{}"},
        Corruption{"HeaderPastTheEnd", "", 0,
                   "header: length 50 runs past the end of the file (10 bytes; truncated?)",
                   LittleEndian64(50) + "{}"},
        Corruption{"NotJson", "{not json", 0, "header: not valid JSON"},
        Corruption{"NotAnObject", "[1,2]", 0, "header: expected a JSON object, got array"},
        Corruption{"DuplicateName",
                   R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                   R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   8, "header: key 't' repeats"},
        Corruption{"EmptyName", R"({"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4,
                   "header: a tensor name is empty"},
        Corruption{"EntryNotAnObject", T("[1]"), 0,
                   "tensor 't': expected an object {dtype, shape, data_offsets}, got array"},
        Corruption{"UnknownKey",
                   T(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],"scale":2})"), 4,
                   "tensor 't': unknown key 'scale'"},
        Corruption{"MissingDtype", T(R"({"shape":[1],"data_offsets":[0,4]})"), 4,
                   "tensor 't': missing 'dtype'"},
        Corruption{"MissingShape", T(R"({"dtype":"F32","data_offsets":[0,4]})"), 4,
                   "tensor 't': missing 'shape'"},
        Corruption{"MissingOffsets", T(R"({"dtype":"F32","shape":[1]})"), 4,
                   "tensor 't': missing 'data_offsets'"},
        Corruption{"DtypeNotAString", T(R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})"), 4,
                   "tensor 't': dtype: expected a string"},
        Corruption{"UnsupportedDtype", T(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})"),
                   8, "tensor 't': dtype I64 is not supported (F32, F16 and BF16 are"},
        Corruption{"NegativeDimension",
                   T(R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]})"), 4,
                   "tensor 't': shape [2,-1]: every dimension must be an integer >= 0"},
        Corruption{"FractionalDimension",
                   T(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})"), 4,
                   "tensor 't': shape [1.5]: every dimension must be an integer >= 0"},
        Corruption{"ShapeNotAnArray", T(R"({"dtype":"F32","shape":3,"data_offsets":[0,12]})"),
                   12, "tensor 't': shape: expected an array of integers"},
        Corruption{"ShapeOverflows",
                   T(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]})"),
                   4, "tensor 't': shape [4294967296,4294967296] overflows 64 bits"},
        Corruption{"OffsetsWrongArity",
                   T(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})"), 8,
                   "tensor 't': data_offsets: expected [begin, end] of integers >= 0"},
        Corruption{"NegativeOffset", T(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"),
                   4, "tensor 't': data_offsets: expected [begin, end] of integers >= 0"},
        Corruption{"EndBeforeBegin", T(R"({"dtype":"F32","shape":[0],"data_offsets":[4,0]})"),
                   4, "tensor 't': data_offsets [4,0]: end < begin"},
        Corruption{"SizeDoesNotMatchShape",
                   T(R"({"dtype":"F16","shape":[3],"data_offsets":[0,8]})"), 8,
                   "tensor 't': data_offsets [0,8] hold 8 bytes, but dtype F16 and shape [3] "
                   "need 6"},
        Corruption{"Overlap",
                   R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   8, "tensor 'b': data_offsets [4,8] overlap tensor 'a' (ends at 8)"},
        Corruption{"Gap", T(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), 8,
                   "tensor 't': data_offsets [4,8] leave a gap: the previous tensor ends at 0"},
        Corruption{"DataTruncated", T(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"),
                   10, "tensor 't': data_offsets [0,16] run past the data region of 10 bytes"},
        Corruption{"TrailingBytes", T(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})"),
                   6, "header: the tensors hold 4 bytes but the data region has 6"},
        Corruption{"MetadataNotAnObject", R"({"__metadata__":[1]})", 0,
                   "header: __metadata__: expected an object"},
        Corruption{"MetadataValueNotAString", R"({"__metadata__":{"epoch":3}})", 0,
                   "header: __metadata__.epoch: expected a string value"}),
    [](const ::testing::TestParamInfo<Corruption>& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace attnserve::server
