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
# UBSan; the server, client and end-to-end tests under TSan; each fuzz
# target for FUZZ_SECONDS after replaying its regression inputs.
FUZZ_SECONDS ?= 60
test-asan test-tsan: test-%:
	@scripts/install-deps.sh --sanitizers
	@mkdir -p build-$* && cmake --preset $* > build-$*/configure.log 2>&1 \
	  || { cat build-$*/configure.log; exit 1; }
	cmake --build --preset $* -j$(JOBS)
	ctest --preset $* -j$(JOBS)

fuzz:
	@scripts/install-deps.sh --sanitizers
	@mkdir -p build-fuzz && cmake --preset fuzz -DATTN_FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  > build-fuzz/configure.log 2>&1 || { cat build-fuzz/configure.log; exit 1; }
	cmake --build --preset fuzz -j$(JOBS) --target fuzzers
	ctest --preset fuzz -j$(JOBS)

# `make bench` also writes $(BENCH_JSON); `make perf-doc` turns that into
# the attention_bench section of docs/PERFORMANCE.md (with the S=16384 memory
# test's measurement), keeping the file's other sections.
BENCH_JSON ?= $(BUILD_DIR)/bench.json
bench: build
	$(BUILD_DIR)/bin/attention_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
	  --benchmark_out=$(BENCH_JSON) --benchmark_out_format=json $(BENCH_FLAGS)

perf-doc:
	-$(BUILD_DIR)/bin/kernels_fast_engine_test --gtest_filter='*MemoryTest*' > $(BUILD_DIR)/memory_test.log
	/usr/bin/python3 bench/perf_table.py $(BENCH_JSON) --memory-log $(BUILD_DIR)/memory_test.log --update docs/PERFORMANCE.md

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
