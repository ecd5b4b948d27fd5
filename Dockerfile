# attnd in a container. Installs through the same scripts/ as CI, so the
# image is built the way every test run is.
#   docker build -t attnserve .
#   docker run --rm -p 50051:50051 attnserve
FROM debian:12 AS build
WORKDIR /src
COPY scripts/ scripts/
RUN scripts/install-deps.sh
COPY . .
RUN make build BUILD_DIR=/src/build

FROM debian:12
COPY scripts/ /opt/attnserve/scripts/
RUN /opt/attnserve/scripts/install-deps.sh
COPY --from=build /src/build/bin/attnd /src/build/bin/attn /usr/local/bin/
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/attnd"]
# Plaintext on every interface: --insecure says so (attnd refuses a non-loopback
# address without TLS otherwise); see docs/OPERATIONS.md, Security, for TLS.
CMD ["--address=0.0.0.0:50051", "--insecure"]
