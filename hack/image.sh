#!/usr/bin/env bash
# Builds the fanout container image without a Docker daemon and without pulling a base image,
# plus the pause (sandbox) image the test cluster's real nodes need. Reproducible: the same
# binary in gives the same digest out (fixed mtimes, owners and entry order; SOURCE_DATE_EPOCH=0).
#
#   hack/image.sh                 build target/release/fanout (cargo, --locked) and both images
#   hack/image.sh --binary PATH   use this fanout binary instead of building one
#   hack/image.sh --print-env     only print where the last build put things (shell `export` lines)
#
# Writes, under target/image/:
#   fanout-<version>.oci.tar      OCI image archive (oci-layout, index.json, blobs/): `ctr images
#                                 import --base-name fanout.test/fanout`, `skopeo copy oci-archive:...`
#   pause-<version>.oci.tar       the sandbox image, from hack/image/pause.c
#   images.env                    FANOUT_IMAGE_ARCHIVE, FANOUT_IMAGE_REF, FANOUT_IMAGE_DIGEST, and the
#                                 same for FANOUT_PAUSE_* (sourced by hack/cluster.sh and the tests)
# and prints each archive's path and manifest digest.
#
# The image's metadata (user, entrypoint, cmd, env, exposed ports, labels) is read from the
# runtime stage of the Dockerfile, so the two images users can build agree by construction.
# The one layer holds /usr/local/bin/fanout, the shared libraries `ldd` names for it (glibc,
# libstdc++, libgcc_s, and Debian's libzmq5 with libsodium and the rest it links) at the same paths, the ELF interpreter, the CA bundle, and
# /etc/passwd and /etc/group with root and nonroot (65532), like distroless/cc's nonroot image.
#
# The tool is umoci (built from its Go module by hack/tools.sh): the OCI project's own tool for
# editing image layouts on disk. It needs no daemon and no registry, takes an uncompressed layer
# tarball verbatim, sets the config fields the Dockerfile sets, and honours SOURCE_DATE_EPOCH.
# crane (go-containerregistry), the other candidate, is registry-centred: it can start from an
# empty base and write a tarball, but its config edits (`crane mutate`) address images by
# reference; umoci edits an OCI layout directory in place, which is what an offline build wants.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/image"
ENV_FILE="$OUT/images.env"
# Names the images get when imported (nothing resolves .test, so nothing is ever pulled for them).
IMAGE_REPOSITORY=fanout.test/fanout
PAUSE_REPOSITORY=fanout.test/pause
PAUSE_VERSION=1

log() { printf '[image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

binary=""
case "${1:-}" in
  --binary) [ $# -eq 2 ] || die "usage: $0 [--binary PATH | --print-env]"; binary=$(realpath "$2") ;;
  --print-env) [ -f "$ENV_FILE" ] || die "no image built yet ($ENV_FILE missing): run $0"; sed 's/^/export /' "$ENV_FILE"; exit 0 ;;
  "") ;;
  *) die "usage: $0 [--binary PATH | --print-env]" ;;
esac

missing=()
command -v gcc >/dev/null || missing+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
command -v python3 >/dev/null || missing+=(python3)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
UMOCI=$("$ROOT/hack/tools.sh" path umoci)
export SOURCE_DATE_EPOCH=0
EPOCH_ISO=1970-01-01T00:00:00Z

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
if [ -z "$binary" ]; then
  log "cargo build --release --locked --bin fanout"
  (cd "$ROOT" && cargo build --release --locked --bin fanout >&2)
  binary="$ROOT/target/release/fanout"
fi
[ -x "$binary" ] || die "$binary is not an executable"

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The Dockerfile's runtime stage (after the last FROM) as umoci config flags, one per line.
dockerfile_config_flags() {
  python3 - "$ROOT/Dockerfile" <<'PY'
import json, shlex, sys
lines, cur = [], ""
for raw in open(sys.argv[1]):
    line = raw.rstrip("\n")
    if cur == "" and (line.lstrip().startswith("#") or not line.strip()):
        continue
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    lines.append(cur + line)
    cur = ""
stage = [l for l in lines]
last_from = max(i for i, l in enumerate(stage) if l.split()[0].upper() == "FROM")
out = []
def exec_form(value):
    value = value.strip()
    return json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]
for l in stage[last_from + 1:]:
    word, _, rest = l.strip().partition(" ")
    word = word.upper()
    if word == "USER":
        out.append("--config.user=" + rest.strip())
    elif word == "ENTRYPOINT":
        out += ["--config.entrypoint=" + a for a in exec_form(rest)]
    elif word == "CMD":
        out += ["--config.cmd=" + a for a in exec_form(rest)]
    elif word == "EXPOSE":
        out += ["--config.exposedports=" + (p if "/" in p else p + "/tcp") for p in rest.split()]
    elif word in ("ENV", "LABEL"):
        flag = "--config.env=" if word == "ENV" else "--config.label="
        for kv in shlex.split(rest):
            if "=" not in kv:
                sys.exit(f"Dockerfile: {word} {rest!r}: only the KEY=VALUE form is supported")
            out.append(flag + kv)
    elif word in ("COPY", "ARG", "RUN", "WORKDIR"):
        continue
    else:
        sys.exit(f"Dockerfile: instruction {word} in the runtime stage is not mirrored by hack/image.sh")
print("\n".join(out))
PY
}

# tar_reproducibly DIR FILE: an uncompressed tar of DIR's contents with fixed metadata.
tar_reproducibly() {
  tar --sort=name --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$1" -cf "$2" .
}

# build_image NAME REPOSITORY TAG ROOTFS ARCHIVE CONFIG_FLAG...: one-layer OCI archive.
# Prints the manifest digest.
build_image() {
  local name=$1 repository=$2 tag=$3 rootfs=$4 archive=$5; shift 5
  local layout="$WORK/$name-layout"
  tar_reproducibly "$rootfs" "$WORK/$name-layer.tar"
  "$UMOCI" init --layout "$layout"
  "$UMOCI" new --image "$layout:$tag"
  "$UMOCI" raw add-layer --image "$layout:$tag" --compress=gzip --history.created="$EPOCH_ISO" \
    --history.author="fanout (hack/image.sh)" --history.created_by="hack/image.sh: $name layer" "$WORK/$name-layer.tar"
  "$UMOCI" config --image "$layout:$tag" --no-history --created="$EPOCH_ISO" \
    --os=linux --architecture=amd64 --author="fanout (hack/image.sh)" "$@"
  "$UMOCI" gc --layout "$layout"
  # The full name containerd (and skopeo) give the image on import, next to the OCI tag.
  python3 - "$layout/index.json" "$repository:$tag" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"), sort_keys=True, separators=(",", ":"))
PY
  find "$layout" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  tar_reproducibly "$layout" "$archive.tmp"
  mv "$archive.tmp" "$archive"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$layout/index.json"
}

# --- the fanout image -------------------------------------------------------------------------
rootfs="$WORK/fanout-rootfs"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/fanout"
interp=$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -n "$interp" ] || die "$binary has no ELF interpreter (a static binary needs no libraries: not expected here)"
install -D -m 0755 "$(realpath "$interp")" "$rootfs$interp"
# ldd prints "name => /path (addr)" for each library it resolved, and "not found" otherwise.
if ldd "$binary" | grep -q 'not found'; then die "ldd: unresolved libraries: $(ldd "$binary" | grep 'not found')"; fi
for lib in $(ldd "$binary" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p'); do
  install -D -m 0644 "$(realpath "$lib")" "$rootfs$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$rootfs/etc" "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
find "$rootfs" -type d -exec chmod 0755 {} +
chmod 1777 "$rootfs/tmp"

# The binary must run from the image's own files alone, as the image's user.
log "checking the image's binary under chroot as 65532:65532"
chroot --userspec=65532:65532 "$rootfs" /usr/local/bin/fanout --version >&2 \
  || die "the binary does not run inside its own root filesystem"

mapfile -t flags < <(dockerfile_config_flags)
archive="$OUT/fanout-$version.oci.tar"
digest=$(build_image fanout "$IMAGE_REPOSITORY" "$version" "$rootfs" "$archive" "${flags[@]}")

# --- the pause image --------------------------------------------------------------------------
prootfs="$WORK/pause-rootfs"
mkdir -p "$prootfs"
gcc -static -Os -s -Wall -Wextra -Werror -o "$prootfs/pause" "$ROOT/hack/image/pause.c"
chmod 0755 "$prootfs" "$prootfs/pause"
"$prootfs/pause" -v >&2
parchive="$OUT/pause-$PAUSE_VERSION.oci.tar"
pdigest=$(build_image pause "$PAUSE_REPOSITORY" "$PAUSE_VERSION" "$prootfs" "$parchive" \
  --config.user=65535:65535 --config.entrypoint=/pause)

cat >"$ENV_FILE.tmp" <<EOF
FANOUT_IMAGE_ARCHIVE=$archive
FANOUT_IMAGE_REF=$IMAGE_REPOSITORY:$version
FANOUT_IMAGE_REPOSITORY=$IMAGE_REPOSITORY
FANOUT_IMAGE_DIGEST=$digest
FANOUT_PAUSE_ARCHIVE=$parchive
FANOUT_PAUSE_REF=$PAUSE_REPOSITORY:$PAUSE_VERSION
FANOUT_PAUSE_REPOSITORY=$PAUSE_REPOSITORY
FANOUT_PAUSE_DIGEST=$pdigest
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "image: $archive"
echo "ref: $IMAGE_REPOSITORY:$version"
echo "digest: $digest"
echo "pause: $parchive"
echo "pause-ref: $PAUSE_REPOSITORY:$PAUSE_VERSION"
echo "pause-digest: $pdigest"
