# syntax=docker/dockerfile:1
# p13n-edge's image: built on the pinned toolchain, run on distroless (glibc, CA certificates,
# no shell) as a non-root user, on a read-only root filesystem. README: "Containers and
# Kubernetes". No container engine runs on the machines this is developed on: scripts/test lints
# this file (hadolint) and tests/container.rs runs the binary in the layout below.
#
#   docker build -t p13n-edge:0.1.0 .

# rust-toolchain.toml's channel (scripts/check-deploy keeps the two equal), on Debian 12 like the
# runtime stage: the binary must not need a newer glibc than distroless's.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
# pingora's zlib-ng is built with cmake. Debian's version within bookworm is fine.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets through Cargo.toml, Cargo.lock, src/, site/, benches/*.rs and conf/ (not
# rust-toolchain.toml: the image's toolchain is that version, without rustup fetching the
# components the file lists for development).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin p13n-edge \
    && install -D -m 0755 target/release/p13n-edge /out/usr/local/bin/p13n-edge \
    && install -d -m 0700 /out/var/lib/p13n-edge /out/run/p13n-edge

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="p13n-edge" \
      org.opencontainers.image.description="Edge proxy for Treasure Data's Real-time Personalization API" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/usr/local/bin/p13n-edge /usr/local/bin/p13n-edge
# The reference and example configs, and the default config: conf/container.toml, which expects
# the layout below. Mount your own over /etc/p13n-edge/p13n-edge.toml.
COPY conf/ /usr/share/p13n-edge/conf/
COPY conf/container.toml /etc/p13n-edge/p13n-edge.toml
# The only places written: the spool (a volume; a new volume takes this owner) and the run
# directory (pid file, upgrade socket, TMPDIR; a tmpfs or emptyDir on a read-only root).
COPY --from=build --chown=65532:65532 /out/var/lib/p13n-edge /var/lib/p13n-edge
COPY --from=build --chown=65532:65532 /out/run/p13n-edge /run/p13n-edge
VOLUME ["/var/lib/p13n-edge"]
ENV TMPDIR=/run/p13n-edge
# distroless's nonroot user, by number so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# Public listener, admin listener (/metrics, /healthz, /readyz).
EXPOSE 8080 9090
# Alive, not ready: an upstream outage makes /readyz fail, and a restart would not help.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/p13n-edge", "probe", "--config", "/etc/p13n-edge/p13n-edge.toml", "--timeout-ms", "2000"]
ENTRYPOINT ["/usr/local/bin/p13n-edge"]
CMD ["run", "--config", "/etc/p13n-edge/p13n-edge.toml"]
