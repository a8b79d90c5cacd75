# syntax=docker/dockerfile:1
# loom-sidecar image: OTLP trace pipeline (receivers 4317 gRPC / 4318 HTTP, health 13133,
# metrics 8888). Build from the repo root:
#   docker build -t loom/loom-sidecar:0.1.0 .
# Run with the bundled default config (binds 0.0.0.0 here, exports to $JAEGER_OTLP_ENDPOINT):
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 13133:13133 -p 8888:8888 \
#     -e JAEGER_OTLP_ENDPOINT=http://jaeger:4317 loom/loom-sidecar:0.1.0
# The Helm chart (charts/loom-sidecar) mounts its own config over /etc/loom-sidecar.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The whole workspace: cargo loads every member's manifest even when building one package.
# .dockerignore keeps target/, .venv/ and .git/ out of the context.
COPY . .
# Cache mounts keep the registry and the target dir between builds; the binary is copied out of
# the cached target dir because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build -p loom-sidecar --release --locked \
 && install -D -m 0755 target/release/loom-sidecar /out/loom-sidecar

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="loom-sidecar" \
      org.opencontainers.image.description="OpenTelemetry-Collector-style OTLP trace pipeline for Loom" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# CA roots for https:// exporters (rustls reads the system store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 loom \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/loom-sidecar --no-create-home \
      --shell /usr/sbin/nologin loom \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/loom-sidecar
COPY --from=builder /out/loom-sidecar /usr/local/bin/loom-sidecar
COPY configs/sidecar.yaml /etc/loom-sidecar/config.yaml
# The default config binds 127.0.0.1 unless told otherwise; in a container listen on all interfaces.
ENV LOOM_SIDECAR_CONFIG=/etc/loom-sidecar/config.yaml \
    LOOM_OTLP_GRPC_ENDPOINT=0.0.0.0:4317 \
    LOOM_OTLP_HTTP_ENDPOINT=0.0.0.0:4318 \
    LOOM_HEALTH_ENDPOINT=0.0.0.0:13133 \
    LOOM_METRICS_ENDPOINT=0.0.0.0:8888
USER 10001:10001
WORKDIR /var/lib/loom-sidecar
EXPOSE 4317 4318 13133 8888
# SIGTERM drains: health turns 503, receivers stop, batches flush, exporters get shutdown_grace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["loom-sidecar"]
CMD ["--config", "/etc/loom-sidecar/config.yaml"]
