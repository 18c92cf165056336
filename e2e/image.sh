#!/usr/bin/env bash
# Builds capow's container image without a container engine: a static (musl) release binary
# per platform, packed by crane (github.com/google/go-containerregistry, built from its Go module
# by components/build.sh, docs/adr/0005-image-without-a-container-engine.md) into the same image the
# repository's Dockerfile builds: one layer on an empty base with the binary at
# /usr/local/bin/capow, a CA bundle and /etc/passwd, user 65532:65532, OCI labels.
#
# The image is named by the generated manifests (config/manager/manager.yaml, written by
# `capow manifests --image`), never here. Output under $CARGO_TARGET_DIR/image (default target/):
#   oci/                        OCI image layout (index.json, blobs/) of every platform built
#   capow-linux-<arch>.tar      the build machine's platform as a `docker load` archive tagged with the image
#   image.txt                   the image reference and the digest of oci/'s top manifest
#
# Usage: e2e/image.sh [--platform linux/amd64[,linux/arm64]] [--push]
#   --platform  platforms to build (default: the build machine's); arm64 on an amd64 machine
#               cross-builds with Debian's gcc-aarch64-linux-gnu and libc6-dev-arm64-cross
#               (installed when missing) and runs the binary's --version under qemu-aarch64
#               when Debian's qemu-user is installed
#   --push      also copy the image (an index when several platforms) to the registry the
#               image names, with crane's credentials (`crane auth login`, or ~/.docker/config.json)
# Staging happens in an in-memory registry (`crane registry serve`) on 127.0.0.1 that lives only
# while the script runs.
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=image
cd "$REPO_DIR"

host_arch() { case "$(uname -m)" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) uname -m ;; esac; }
platforms="linux/$(host_arch)" push=0
while (( $# )); do
  case $1 in
    --platform) platforms=${2:?--platform needs a value}; shift 2 ;;
    --platform=*) platforms=${1#--platform=}; shift ;;
    --push) push=1; shift ;;
    *) die "usage: e2e/image.sh [--platform linux/amd64[,linux/arm64]] [--push]" ;;
  esac
done

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
OUT="$TARGET_DIR/image"
WORK="$OUT/work"

# The image the manifests name: the default of the clusterctl variable in the Deployment.
IMAGE=$(sed -n 's/^ *image: \${CAPOW_IMAGE:=\(.*\)}$/\1/p' config/manager/manager.yaml)
[[ -n $IMAGE ]] || die "config/manager/manager.yaml names no \${CAPOW_IMAGE:=...} image"
TAG=${IMAGE##*:}

# The labels' values, from Cargo.toml (the one place of the version, license and repository).
read -r VERSION LICENSE SOURCE DESCRIPTION < <(python3 - <<'PY'
import tomllib
with open("Cargo.toml", "rb") as f:
    c = tomllib.load(f)
w, p = c["workspace"]["package"], c["package"]
print(w["version"], w["license"], w["repository"], p["description"].replace("\n", " "))
PY
)
[[ $TAG == "v$VERSION" ]] || log "note: the image tag $TAG is not v$VERSION (Cargo.toml)"
REVISION=$(git rev-parse HEAD 2>/dev/null || true)
# Layer timestamps: the commit's time, so that the same binary gives the same layer.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

# Installs a Debian package when missing (as root, like prereqs.sh).
need_deb() { # package command
  command -v "$2" > /dev/null && return
  [[ $(id -u) -eq 0 ]] || die "$2 is missing: install the Debian package $1"
  log "installing $1 (for $2)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" > /dev/null \
    || { apt-get update -qq > /dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" > /dev/null; }
}

# Builds the static release binary for one architecture; prints its path.
build_binary() { # arch
  local arch=$1 rt t0=$SECONDS
  case $arch in
    amd64) rt=x86_64-unknown-linux-musl ;;
    arm64) rt=aarch64-unknown-linux-musl ;;
    *) die "unsupported architecture $arch (amd64, arm64)" ;;
  esac
  if ! rustc --print target-libdir --target "$rt" > /dev/null 2>&1 \
      || [[ ! -d "$(rustc --print target-libdir --target "$rt")" ]]; then
    log "adding the Rust target $rt"
    rustup target add "$rt" >&2
  fi
  local -a env=()
  if [[ $arch == "$(host_arch)" ]]; then
    # ring's C and assembly against musl's headers (Debian musl-tools).
    need_deb musl-tools musl-gcc
    local u=${rt//-/_}
    env+=("CC_$u=musl-gcc")
  else
    # Cross: the target's GNU C compiler (with its libc headers) builds ring's C parts and
    # drives the link; Rust's musl target brings its own (self-contained) C runtime and libc.a.
    local gnu=${rt%%-*}-linux-gnu-gcc u=${rt//-/_}
    need_deb "gcc-${rt%%-*}-linux-gnu" "$gnu"
    [[ -d /usr/${rt%%-*}-linux-gnu/include ]] || need_deb "libc6-dev-$arch-cross" "/usr/${rt%%-*}-linux-gnu/include/stdio.h"
    env+=("CC_$u=$gnu" "CARGO_TARGET_${u^^}_LINKER=$gnu")
  fi
  log "building the static release binary for $rt"
  env "${env[@]}" cargo build --locked --release --target "$rt" --bin capow >&2 \
    || die "the release build for $rt failed"
  local bin="$TARGET_DIR/$rt/release/capow"
  file -b "$bin" | grep -Eq 'statically linked|static-pie linked' || die "$bin is not statically linked: $(file -b "$bin")"
  # Run it: natively, or through qemu-user when the machine has it (Debian qemu-user).
  local -a run=()
  if [[ $arch != "$(host_arch)" ]]; then
    if command -v "qemu-${rt%%-*}" > /dev/null; then run=("qemu-${rt%%-*}"); else run=(skip); fi
  fi
  if [[ ${run[*]:-} != skip ]]; then
    local says; says=$("${run[@]}" "$bin" --version)
    [[ $says == "capow $VERSION" ]] || die "$bin --version says $says, not capow $VERSION"
  fi
  log "$rt: $(( SECONDS - t0 )) s, $(( $(stat -c %s "$bin") / 1024 / 1024 )) MiB"
  echo "$bin"
}

# The image's one layer as an uncompressed tar (crane compresses it): root-owned, fixed mtimes.
make_layer() { # binary out.tar
  local root="$WORK/rootfs"
  rm -rf "$root" && mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  install -m 0755 "$1" "$root/usr/local/bin/capow"
  # The CA bundle rustls-platform-verifier (reqwest) reads for OpenStack endpoints without a
  # cacert of their own (Debian's ca-certificates: Mozilla's roots).
  [[ -s /etc/ssl/certs/ca-certificates.crt ]] || need_deb ca-certificates update-ca-certificates
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  # The user and group 65532 (`nonroot`, as distroless images name it).
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
  chmod 1777 "$root/tmp"
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$root" -cf "$2" etc tmp usr
}

"$E2E_DIR/components/build.sh" crane
CRANE="$(bin_dir crane "$CRANE_VERSION")/crane"

rm -rf "$WORK" && mkdir -p "$WORK"
# The staging registry, on loopback, for as long as this script runs.
setsid "$CRANE" registry serve --address 127.0.0.1:0 > "$WORK/registry.log" 2>&1 < /dev/null &
registry_pid=$!
trap 'kill -TERM -- "-$registry_pid" 2>/dev/null || true' EXIT
wait_for "the staging registry" 30 grep -q 'serving on port' "$WORK/registry.log"
REG="127.0.0.1:$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$WORK/registry.log" | head -1)/capow"

labels=(
  --label "org.opencontainers.image.title=capow"
  --label "org.opencontainers.image.description=$DESCRIPTION"
  --label "org.opencontainers.image.source=$SOURCE"
  --label "org.opencontainers.image.version=$VERSION"
  --label "org.opencontainers.image.licenses=$LICENSE"
)
if [[ -n $REVISION ]]; then labels+=(--label "org.opencontainers.image.revision=$REVISION"); fi

digests=() host_ref=""
IFS=, read -r -a plats <<< "$platforms"
for p in "${plats[@]}"; do
  arch=${p#linux/}
  [[ $p == linux/* && -n $arch ]] || die "unsupported platform $p (linux/amd64, linux/arm64)"
  bin=$(build_binary "$arch")
  make_layer "$bin" "$WORK/layer-$arch.tar"
  "$CRANE" append --oci-empty-base -f "$WORK/layer-$arch.tar" -t "$REG:$TAG-$arch" > /dev/null
  digest=$("$CRANE" mutate "$REG:$TAG-$arch" --set-platform "linux/$arch" --user 65532:65532 \
    --entrypoint /usr/local/bin/capow --env PATH=/usr/local/bin "${labels[@]}" -t "$REG:$TAG-$arch")
  digests+=("$digest")
  if [[ $arch == "$(host_arch)" ]]; then host_ref="$REG:$TAG-$arch"; fi
done
if (( ${#digests[@]} == 1 )); then
  "$CRANE" copy "${digests[0]}" "$REG:$TAG" > /dev/null
else
  args=(); for d in "${digests[@]}"; do args+=(-m "$d"); done
  "$CRANE" index append "${args[@]}" -t "$REG:$TAG" > /dev/null
fi

rm -rf "$OUT/oci" "$OUT"/capow-linux-*.tar
"$CRANE" pull --format oci "$REG:$TAG" "$OUT/oci"
if [[ -n $host_ref ]]; then
  # The same image, saved under the manifests' name (mutate with no change re-saves it as is).
  "$CRANE" mutate "$host_ref" -t "$IMAGE" -o "$OUT/capow-linux-$(host_arch).tar" > /dev/null
fi
top=$("$CRANE" digest "$REG:$TAG")
printf '%s\n%s\n' "$IMAGE" "$top" > "$OUT/image.txt"
log "built $IMAGE ($platforms) digest $top: $OUT/oci$( [[ -n $host_ref ]] && echo ", $OUT/capow-linux-$(host_arch).tar")"
for d in "${digests[@]}"; do
  log "  ${d##*@}: $(( $("$CRANE" manifest "$d" | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))') / 1024 / 1024 )) MiB compressed"
done

if (( push )); then
  log "pushing $IMAGE"
  "$CRANE" copy "$REG:$TAG" "$IMAGE"
fi
