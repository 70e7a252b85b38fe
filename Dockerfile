# syntax=docker/dockerfile:1
# The single `microshop` binary in a small image without a shell, run as a
# non-root user (uid 65532). Every service runs from it:
#   docker build -t microshop:dev .
#   docker run --rm -e MICROSHOP_INSECURE_NO_AUTH=1 -p 50051:50051 microshop:dev serve orchestrator
# (Not built by scripts/test.sh: the CI machine has no Docker.)

# ---- build ---------------------------------------------------------------
# Debian 12 (bookworm) like the runtime image, so the glibc matches.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# No protoc needed (protoc-bin-vendored); TLS is rustls + ring (a C compiler
# is in the image). The cache mounts keep the registry and target/ between
# builds; the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p microshop --locked \
 && install -D -m 0755 target/release/microshop /out/microshop

# ---- runtime -------------------------------------------------------------
# glibc, libgcc and CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/microshop /usr/local/bin/microshop
USER 65532:65532
# gRPC: orchestrator, inventory, loyalty, order; Prometheus /metrics.
EXPOSE 50051 50052 50053 50054 9464
ENV MICROSHOP_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/microshop"]
CMD ["--help"]
