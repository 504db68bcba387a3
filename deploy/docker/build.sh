#!/usr/bin/env bash
# `make image`: builds the jobpipe image with whatever is available.
#  1. A Docker engine: the multi-stage deploy/docker/Dockerfile.
#  2. buildah (Debian's, installed when missing and root): the same Dockerfile, which needs to pull
#     its base images; where that fails (no registry access), an image FROM scratch with the
#     locally built release binaries and the shared libraries they need (Containerfile.local),
#     then proven by running its binaries inside it as user 65532.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
tag="jobpipe:${version}"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker build -f deploy/docker/Dockerfile -t "$tag" .
  echo "image: built $tag with docker from deploy/docker/Dockerfile"
  exit 0
fi

if ! command -v buildah >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "image: neither a Docker engine nor buildah is available (installing buildah needs root)" >&2
    exit 1
  fi
  echo "image: installing Debian's buildah"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null; }
fi
# No overlay filesystem or daemon here: plain directories and chroot isolation.
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

if buildah bud --quiet -f deploy/docker/Dockerfile -t "$tag" . 2>/tmp/jobpipe-image.log; then
  echo "image: built $tag with buildah from deploy/docker/Dockerfile"
  exit 0
fi
echo "image: the Dockerfile's base images cannot be pulled here ($(tail -n1 /tmp/jobpipe-image.log));"
echo "image: building FROM scratch with the local release binaries instead"

cargo build --release --locked --bins -p jobpipe-producer -p jobpipe-consumer -p jobpipe-cli
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
for bin in jobpipe-producer jobpipe-consumer jobpipe; do
  objcopy --strip-debug "target/release/$bin" "$root/usr/local/bin/$bin"
  # The shared libraries each binary links, and the dynamic loader.
  ldd "target/release/$bin" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
printf 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
printf 'nonroot:x:65532:\n' > "$root/etc/group"
cp deploy/docker/Containerfile.local "$stage/Containerfile"
buildah bud --quiet -f "$stage/Containerfile" -t "$tag" "$stage" >/dev/null

# Prove it: the binaries run inside the image, as its non-root user.
container=$(buildah from "$tag")
buildah run --user 65532:65532 "$container" -- /usr/local/bin/jobpipe-producer --check-config
buildah run --user 65532:65532 "$container" -- /usr/local/bin/jobpipe-consumer --check-config
buildah run --user 65532:65532 "$container" -- /usr/local/bin/jobpipe --version
buildah rm "$container" >/dev/null
size=$(buildah images --format '{{.Size}}' "$tag" | head -n1)
echo "image: built $tag ($size) with buildah FROM scratch; its binaries ran inside it as user 65532"
