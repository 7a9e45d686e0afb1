# syntax=docker/dockerfile:1
#
# One image for every role: `fanout controller` (the chart's Deployment) and `fanout proxy` (the
# DaemonSets the controller writes). Build and push: docs/install.md.
#
#   docker build -t REGISTRY/fanout:$(cargo pkgid | sed 's/.*[#@]//') .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# libzmq is Debian's libzmq5 (built with libsodium, so it has CURVE), linked through the `links`
# override in .cargo/config.toml: libzmq3-dev at build time. `ring` compiles C with the C
# toolchain rust:bookworm already carries; no OpenSSL is linked (rustls).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake libzmq3-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# The registry and target caches survive between builds on the same builder; the binary is
# copied out of the cached target directory inside the same step, with libzmq5 and what it
# links (libsodium, libpgm, libnorm, gssapi, libbsd, ...) at the paths ldd resolves, for the
# runtime stage, which has glibc and libstdc++ but not these.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin fanout \
 && install -D -m 0755 target/release/fanout /out/fanout \
 && /out/fanout --version \
 && for lib in $(ldd /out/fanout | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p' | grep -v -e '/libc\.so' -e '/libm\.so' -e '/libgcc_s' -e '/libstdc++'); do \
      install -D -m 0644 "$(realpath "$lib")" "/out/root$lib"; \
    done

# distroless/cc: glibc, libgcc and libstdc++ (libzmq is C++), CA certificates, no shell.
# Same Debian release as the builder, so the glibc the binary was linked against is there;
# libzmq5 and its own libraries come from the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/root/ /
COPY --from=builder /out/fanout /usr/local/bin/fanout
# Everything below is mirrored by hack/image.sh, which builds the same image without Docker by
# reading these lines: keep them in the KEY=VALUE / exec forms it parses.
ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=fanout \
      org.opencontainers.image.description="ZeroMQ publish/subscribe fanout fabric for Kubernetes: controller, per-node proxy and CLI" \
      org.opencontainers.image.licenses=Apache-2.0
# nonroot is uid/gid 65532; the chart's securityContext pins the same numbers.
USER 65532:65532
# Controller and proxy HTTP (/healthz, /readyz, /metrics), proxy publisher port (FanoutGroup default).
EXPOSE 8080 7100
ENTRYPOINT ["/usr/local/bin/fanout"]
CMD ["--help"]
