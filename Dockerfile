# attnd in a small non-root image: `make image` builds it (Docker when an
# engine answers, else buildah; scripts/image.sh), docs/OPERATIONS.md "Image"
# says how to run it.
#   docker run --rm -p 50051:50051 -p 9464:9464 attnserve
#
# Build stage: the packages come from the same scripts/install-deps.sh as CI
# (its build list only), and only attnd and attn are compiled. install-deps.sh
# is copied alone before the sources, so a source change reuses the package
# layer; .dockerignore keeps docs, tests, benchmarks and local build trees out
# of the context, so a change to them rebuilds nothing.
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh --build && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_BENCH=OFF \
      > /tmp/configure.log 2>&1 || { cat /tmp/configure.log; exit 1; } \
 && cmake --build build -j"$(nproc)" --target attnd attn \
 && strip build/bin/attnd build/bin/attn

# Runtime stage: the shared libraries attnd and attn load (install-deps.sh's
# runtime list, from `ldd`), the two binaries, and a fixed non-root user.
FROM debian:12-slim
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --runtime \
 && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
 && groupadd --system --gid 10001 attnd \
 && useradd --system --uid 10001 --gid attnd --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin attnd
COPY --from=build /src/build/bin/attnd /src/build/bin/attn /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# gRPC, and Prometheus metrics (/metrics).
EXPOSE 50051 9464
# attnd drains on SIGTERM: --lame_duck_s of NOT_SERVING, then up to
# --shutdown_grace_s for accepted calls. 2 + 7 s (+ start of the drain) fit
# the 10 s that `docker stop` and `podman stop` wait before SIGKILL.
STOPSIGNAL SIGTERM
# Asks the gRPC health service (attn exits 1 unless SERVING). A container
# started with another --address sets ATTND_HEALTH_ADDRESS to match.
ENV ATTND_HEALTH_ADDRESS=127.0.0.1:50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD /usr/local/bin/attn --address="$ATTND_HEALTH_ADDRESS" --timeout=2 health || exit 1
ENTRYPOINT ["/usr/local/bin/attnd"]
# Plaintext on every interface: --insecure says so (attnd refuses a non-loopback
# address without TLS otherwise); see docs/OPERATIONS.md, Security, for TLS.
# Metrics on every interface too, where Prometheus can scrape them.
CMD ["--address=0.0.0.0:50051", "--insecure", "--metrics_address=0.0.0.0:9464", \
     "--lame_duck_s=2", "--shutdown_grace_s=7"]

# Last, so that a new revision changes only the image's metadata. scripts/image.sh
# passes VERSION (CMake's project version), REVISION (the git commit) and
# SOURCE (the git remote's URL, when there is one). The project states no
# licence yet: NOASSERTION is SPDX's word for that.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="attnserve" \
      org.opencontainers.image.description="attnd: multi-head attention with positional encodings over gRPC" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="NOASSERTION"
