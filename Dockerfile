# Multi-stage build: `cargo build --profile dist --locked`, the release build with whole-program
# optimisation (see Cargo.toml).
# podman and buildah: build with `--format docker`, or the HEALTHCHECK below is dropped (the OCI
# image format has no health check).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The dependencies first, from the manifests alone, with an empty crate in place of the source:
# this layer stays cached until Cargo.toml or Cargo.lock changes, so a change to src/ recompiles
# only this crate. The stand-in's build records are removed so that the real source is built.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --profile dist --locked \
 && rm -rf src target/dist/.fingerprint/uem-proxy-*
COPY src ./src
RUN cargo build --profile dist --locked

# Runtime: Debian slim for the system trust store (ca-certificates), nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/dist/uem-proxy /usr/local/bin/uem-proxy
# A fixed unprivileged user; it owns nothing in the image. A secret file must be readable by it:
# owned by 65532 with mode 0400, or a compose or podman secret with uid=65532,mode=0400.
USER 65532:65532
# The image's own choice, JSON logs, as a default: a mounted configuration file (UEM_PROXY_CONFIG)
# and the environment both outrank it, where an ENV UEM_PROXY_LOG_FORMAT would outrank the file.
# The proxy listens on 127.0.0.1:8080 unless told otherwise: right for a sidecar, whose neighbours
# in the pod share the loopback. To serve a published port or a network, set
# UEM_PROXY_LISTEN=0.0.0.0:8080 and UEM_PROXY_ALLOW_CIDRS (or listen and allow_cidrs in the file).
ENV UEM_PROXY_DEFAULTS="log_format=json"
EXPOSE 8080
# `healthcheck` probes where `run` listens: the environment, else the file, else the default.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
  CMD ["uem-proxy", "healthcheck"]
ENTRYPOINT ["uem-proxy"]
CMD ["run"]
