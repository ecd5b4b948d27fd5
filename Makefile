# The two commands: `make run` and `make test` (each installs what is missing
# and builds first). See README.md.
BUILD_DIR  ?= build
BUILD_TYPE ?= Release
JOBS       ?= $(shell nproc)
ADDRESS    ?= 127.0.0.1:50051
ATTND_FLAGS ?=

.PHONY: all deps configure build run test image test-image test-netns test-asan test-tsan fuzz \
	bench perf-doc loadtest package figures clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@mkdir -p $(BUILD_DIR) && cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) > $(BUILD_DIR)/configure.log 2>&1 \
	  || { cat $(BUILD_DIR)/configure.log; exit 1; }

build: configure
	cmake --build $(BUILD_DIR) -j$(JOBS)

run: build
	$(BUILD_DIR)/bin/attnd --address=$(ADDRESS) $(ATTND_FLAGS)

# The slow suites (labels image, netns, fuzz) are left to their own targets.
test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) --timeout 300 -LE '^(image|netns|fuzz)$$'

# The container image (scripts/image.sh): Docker when an engine answers, else
# buildah on local debian:12 bases. IMAGE names it (default attnserve:latest).
image:
	scripts/image.sh

# tests/deploy/image_test.py: the image built as `make image` does and run by
# podman (needs root; about 23 minutes on a machine with nothing cached).
test-image: build
	@scripts/install-deps.sh --image
	ctest --test-dir $(BUILD_DIR) --output-on-failure --timeout 1800 -L '^image$$'

test-netns: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure --timeout 900 -L '^netns$$'

# Sanitizer and fuzz builds (CMakePresets.json), each in its own directory
# (build-asan/, build-tsan/, build-fuzz/): the whole suite under ASan +
# UBSan; the server, client and end-to-end tests under TSan (only their
# targets are built: tsan_suite); each fuzz target for FUZZ_SECONDS after
# replaying its regression inputs.
FUZZ_SECONDS ?= 60
test-asan: SANITIZER_TARGET = all
test-tsan: SANITIZER_TARGET = tsan_suite
test-asan test-tsan: test-%:
	@scripts/install-deps.sh --sanitizers
	@mkdir -p build-$* && cmake --preset $* > build-$*/configure.log 2>&1 \
	  || { cat build-$*/configure.log; exit 1; }
	cmake --build --preset $* -j$(JOBS) --target $(SANITIZER_TARGET)
	ctest --preset $* -j$(JOBS)

fuzz:
	@scripts/install-deps.sh --sanitizers
	@mkdir -p build-fuzz && cmake --preset fuzz -DATTN_FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  > build-fuzz/configure.log 2>&1 || { cat build-fuzz/configure.log; exit 1; }
	cmake --build --preset fuzz -j$(JOBS) --target fuzzers
	ctest --preset fuzz -j$(JOBS)

# `make bench`: attention_bench once per instruction set (ATTN_MAX_ISA; the
# repetitions of all rows interleaved at random, so that a causal row and its
# non-causal row, whose ratio is a target, see the same swings of the host; the
# bench caps oneDNN's ceiling at the same ISA; an ISA the CPU lacks is
# skipped), each writing $(BUILD_DIR)/bench-<isa>.json, on the grid where
# issue 13 states its targets (S 512..4096, 2 threads; the baseline, whose
# speed is reported only, at S 1024 and 2048). BENCH_FILTER_<isa> or
# BENCH_FLAGS change it (e.g. BENCH_FILTER_avx512=. for the whole grid).
# `make perf-doc` turns the JSONs into the attention_bench section of
# docs/PERFORMANCE.md (with the S=16384 memory test's measurement), keeping
# the file's other sections. Then variants_bench (issue 14's GQA and window
# rows at the CPU's best ISA, 5 repetitions interleaved at random so each
# ratio's two rows share the machine's moods, $(BUILD_DIR)/bench-variants.json),
# decode_bench, and against the real attnd: bench/whole_call.py (issue 13's
# server/compute ratio at S=2048) and bench/fp16_transport.py (issue 14's
# fp16 row); those sections of docs/PERFORMANCE.md are written by hand.
BENCH_ISAS ?= avx512 avx2 baseline
BENCH_GRID_TARGETS = ^(BM_BatchedCeiling/S:[0-9]+/threads:2/|BM_FastAttend/method:[0-7]/S:(512|1024|2048|4096)/causal:[01]/threads:2/)
BENCH_FILTER_avx512 ?= $(BENCH_GRID_TARGETS)
BENCH_FILTER_avx2 ?= $(BENCH_GRID_TARGETS)
BENCH_FILTER_baseline ?= ^(BM_BatchedCeiling/S:(1024|2048)/threads:2/|BM_FastAttend/method:[0-7]/S:(1024|2048)/causal:[01]/threads:2/)
bench: build
	$(foreach isa,$(BENCH_ISAS),$(call bench_isa,$(isa)))
	$(BUILD_DIR)/bin/variants_bench --benchmark_repetitions=5 \
	  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
	  --benchmark_out=$(BUILD_DIR)/bench-variants.json --benchmark_out_format=json
	$(BUILD_DIR)/bin/decode_bench --threads=1 | tee $(BUILD_DIR)/decode-bench.txt
	PYTHONPATH=$(BUILD_DIR)/python /usr/bin/python3 bench/whole_call.py \
	  --attnd $(BUILD_DIR)/bin/attnd --calls 30 | tee $(BUILD_DIR)/whole-call.txt
	PYTHONPATH=$(BUILD_DIR)/python ATTND_PATH=$(BUILD_DIR)/bin/attnd /usr/bin/python3 \
	  bench/fp16_transport.py --calls 20 | tee $(BUILD_DIR)/fp16-transport.txt

define bench_isa
rm -f $(BUILD_DIR)/bench-$(1).json
ATTN_MAX_ISA=$(1) $(BUILD_DIR)/bin/attention_bench --benchmark_repetitions=3 \
  --benchmark_enable_random_interleaving=true \
  --benchmark_report_aggregates_only=true --benchmark_filter='$(BENCH_FILTER_$(1))' \
  --benchmark_out=$(BUILD_DIR)/bench-$(1).json --benchmark_out_format=json $(BENCH_FLAGS)

endef

perf-doc:
	-$(BUILD_DIR)/bin/kernels_fast_engine_test --gtest_filter='*MemoryTest*' > $(BUILD_DIR)/memory_test.log
	/usr/bin/python3 bench/perf_table.py $(foreach isa,$(BENCH_ISAS),$(BUILD_DIR)/bench-$(isa).json) \
	  --memory-log $(BUILD_DIR)/memory_test.log --update docs/PERFORMANCE.md

# A bounded run of every deploy/ghz config against a local attnd with `attn bench`.
LOADTEST_TOTAL ?= 2000
loadtest: build
	scripts/loadtest.sh $(BUILD_DIR) $(LOADTEST_TOTAL)

# build/attnserve_<version>_<arch>.deb: attnd, attn and a systemd unit (cmake/packaging.cmake).
package: build
	cd $(BUILD_DIR) && cpack -G DEB

# docs/figures/*.png: the pictures of docs/methods.md, drawn by `attn plot`
# from a local attnd (scripts/figures.sh).
figures: build
	scripts/figures.sh $(BUILD_DIR) docs/figures

clean:
	rm -rf $(BUILD_DIR) build-dev build-asan build-tsan build-fuzz
