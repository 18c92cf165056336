# syntax=docker/dockerfile:1
# capow's container image: the static (musl) release binary on an empty base, no shell, no
# package manager, user and group 65532 (`nonroot`), OCI labels
# (https://github.com/opencontainers/image-spec/blob/v1.1.1/annotations.md).
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg REVISION="$(git rev-parse HEAD)" -t <image> .
#
# works with BuildKit (docker buildx), buildah/podman and any builder that sets the
# BUILDPLATFORM/TARGETARCH build arguments; other platforms than the builder's are
# cross-compiled, not emulated. Without a container engine, e2e/image.sh builds the same image
# (same files, user, entrypoint and labels) with crane. docs/release.md has the release steps.

# Toolchain of the build stage (Docker Official Image `rust`).
ARG RUST_VERSION=1.95.0
# capow's version, the org.opencontainers.image.version label; tests/generated.rs keeps it
# equal to Cargo.toml's, and the build fails when the binary says otherwise.
ARG VERSION=0.1.0

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-bookworm AS build
ARG TARGETARCH
ARG VERSION
WORKDIR /src
# The Rust musl target and a C compiler for ring: musl-gcc (Debian musl-tools) for the builder's
# own architecture, the target's GNU gcc and libc headers when cross-compiling (Rust's musl
# targets bring their own C runtime and libc.a, so the GNU compiler only compiles ring's C and
# drives the link).
RUN set -eux; \
    build="$(dpkg --print-architecture)"; arch="${TARGETARCH:-$build}"; \
    case "$arch" in \
      amd64) rt=x86_64-unknown-linux-musl ;; \
      arm64) rt=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $arch (amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    u="$(echo "$rt" | tr - _)"; U="$(echo "$u" | tr a-z A-Z)"; \
    apt-get update; \
    if [ "$arch" = "$build" ]; then \
      apt-get install -y --no-install-recommends musl-tools ca-certificates file; \
      echo "export CC_$u=musl-gcc" > /env; \
    else \
      gcc="${rt%%-*}-linux-gnu-gcc"; \
      apt-get install -y --no-install-recommends "gcc-$(echo "${rt%%-*}" | tr _ -)-linux-gnu" "libc6-dev-$arch-cross" ca-certificates file; \
      printf 'export CC_%s=%s CARGO_TARGET_%s_LINKER=%s\n' "$u" "$gcc" "$U" "$gcc" > /env; \
    fi; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$rt"; \
    echo "$rt" > /rust-target
COPY . .
RUN set -eux; \
    . /env; rt="$(cat /rust-target)"; \
    cargo build --locked --release --target "$rt" --bin capow; \
    bin="target/$rt/release/capow"; \
    file -b "$bin" | grep -Eq 'statically linked|static-pie linked'; \
    if [ "${TARGETARCH:-$(dpkg --print-architecture)}" = "$(dpkg --print-architecture)" ]; then \
      test "$("$bin" --version)" = "capow $VERSION"; \
    fi; \
    mkdir -p /rootfs/usr/local/bin /rootfs/etc/ssl/certs /rootfs/tmp; \
    install -m 0755 "$bin" /rootfs/usr/local/bin/capow; \
    install -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /rootfs/etc/passwd; \
    printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group; \
    chmod 0644 /rootfs/etc/passwd /rootfs/etc/group; \
    chmod 1777 /rootfs/tmp

FROM scratch
ARG VERSION
ARG REVISION=
LABEL org.opencontainers.image.title="capow" \
      org.opencontainers.image.description="Cluster API infrastructure provider for OpenStack worker machines of hosted-control-plane clusters, with a cluster-autoscaler externalgrpc cloud provider" \
      org.opencontainers.image.source="https://github.com/capow-dev/capow" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/capow"]
