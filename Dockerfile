# Multi-stage build: the build step is the same `cargo build --release --locked` CI runs.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

# Runtime: Debian slim for the system trust store (ca-certificates), nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/uem-proxy /usr/local/bin/uem-proxy
# A fixed unprivileged user; it owns nothing in the image.
USER 65532:65532
# Loopback by default: right for a sidecar, whose neighbours in the pod share it. To serve a
# published port or a network, set UEM_PROXY_LISTEN=0.0.0.0:8080 and UEM_PROXY_ALLOW_CIDRS.
ENV UEM_PROXY_LISTEN=127.0.0.1:8080 \
    UEM_PROXY_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
  CMD ["uem-proxy", "healthcheck"]
ENTRYPOINT ["uem-proxy"]
CMD ["run"]
