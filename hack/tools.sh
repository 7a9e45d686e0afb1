#!/usr/bin/env bash
# Builds and caches the control-plane tools the cluster tests need, from the Go module proxy.
#
#   hack/tools.sh ensure        build whatever is missing (helm, kwok, etcd, kubernetes, then the
#                               node parts: runc, containerd, CNI plugins, crictl, umoci)
#   hack/tools.sh path NAME     absolute path of a cached binary (built first if missing);
#                               NAME is one of: kube-apiserver kube-controller-manager
#                               kube-scheduler kubectl kubelet kube-proxy etcd helm kwok
#                               kwok-stages (a directory) containerd containerd-shim-runc-v2 ctr
#                               runc crictl umoci cni-bin (a directory of CNI plugins)
#   hack/tools.sh bindir        directory holding (symlinks to) all binaries
#   hack/tools.sh versions      print the pinned versions
#
# The cache lives outside the repository (FANOUT_TOOLS_CACHE, default /var/cache/fanout-tools)
# and every tool sits in a directory named by its version, so only the first run on a machine
# pays for the build. Each tool is built in its own Go module so dependency versions never mix.
# Wrapper go.mod files are generated here at build time; nothing fetched is committed.
set -euo pipefail

K8S_VERSION="${FANOUT_K8S_VERSION:-v1.37.2}"
# The etcd release k8s.io/kubernetes ${K8S_VERSION} pins in its go.mod (go.etcd.io/etcd/server/v3).
ETCD_VERSION="${FANOUT_ETCD_VERSION:-v3.7.0}"
HELM_VERSION="${FANOUT_HELM_VERSION:-v3.22.0}"
KWOK_VERSION="${FANOUT_KWOK_VERSION:-v0.8.0}"
# Real nodes (hack/cluster.sh add-real-node): Kubernetes 1.36+ needs containerd 2.x; Debian 12
# has 1.6, so containerd, runc and the CNI plugins are built from their Go modules too.
CONTAINERD_VERSION="${FANOUT_CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${FANOUT_RUNC_VERSION:-v1.5.3}"
CNI_PLUGINS_VERSION="${FANOUT_CNI_PLUGINS_VERSION:-v1.10.0}"
CRICTL_VERSION="${FANOUT_CRICTL_VERSION:-v1.37.0}"
# The image tool (hack/image.sh): umoci edits OCI image layouts on disk, no daemon, no registry.
UMOCI_VERSION="${FANOUT_UMOCI_VERSION:-v0.6.0}"

CACHE="${FANOUT_TOOLS_CACHE:-/var/cache/fanout-tools}"
# All four chosen releases declare `go 1.26.0`; the machine's Go 1.26 builds them. Override with
# e.g. FANOUT_GOTOOLCHAIN=go1.27.3 if a newer pin needs it (the module proxy serves toolchains).
# A machine whose own Go is older (e.g. Debian's golang-go) fetches go1.26.8 from the proxy.
GO_MIN=1.26
go_is_recent() {
  local v; v=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  [ "$(printf '%s\n%s\n' "$GO_MIN" "$v" | sort -V | head -n1)" = "$GO_MIN" ]
}
if [ -n "${FANOUT_GOTOOLCHAIN:-}" ]; then
  export GOTOOLCHAIN="$FANOUT_GOTOOLCHAIN"
elif command -v go >/dev/null && ! go_is_recent; then
  export GOTOOLCHAIN=go1.26.8
else
  export GOTOOLCHAIN=local
fi
export GOWORK=off
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

K8S_DIR="$CACHE/kubernetes-$K8S_VERSION"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
KWOK_DIR="$CACHE/kwok-$KWOK_VERSION"
CONTAINERD_DIR="$CACHE/containerd-$CONTAINERD_VERSION"
RUNC_DIR="$CACHE/runc-$RUNC_VERSION"
CNI_DIR="$CACHE/cni-plugins-$CNI_PLUGINS_VERSION"
CRICTL_DIR="$CACHE/crictl-$CRICTL_VERSION"
UMOCI_DIR="$CACHE/umoci-$UMOCI_VERSION"
ALL_VERSIONS="k8s=$K8S_VERSION etcd=$ETCD_VERSION helm=$HELM_VERSION kwok=$KWOK_VERSION containerd=$CONTAINERD_VERSION runc=$RUNC_VERSION cni=$CNI_PLUGINS_VERSION crictl=$CRICTL_VERSION umoci=$UMOCI_VERSION"
# One directory of symlinks per combination of versions.
BIN_DIR="$CACHE/bin-$(printf '%s' "$ALL_VERSIONS" | sha256sum | cut -c1-12)"
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
CONTAINERD_BINS=(containerd containerd-shim-runc-v2 ctr)
CNI_PLUGINS=(main/bridge main/loopback ipam/host-local meta/portmap)

log() { printf '[tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs the Debian packages a fresh machine lacks (the script runs as root).
ensure_packages() {
  local missing=()
  command -v go >/dev/null || missing+=(golang-go)
  command -v curl >/dev/null || missing+=(curl)
  command -v git >/dev/null || missing+=(git)
  # runc is the one cgo build: its nsenter is C, and seccomp filters come from libseccomp.
  command -v gcc >/dev/null || missing+=(gcc)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
  [ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  if [ "$GOTOOLCHAIN" = local ] && ! go_is_recent; then
    export GOTOOLCHAIN=go1.26.8
    log "local Go is older than $GO_MIN: using GOTOOLCHAIN=$GOTOOLCHAIN"
  fi
}

timed() { # timed LABEL CMD... : runs CMD, records seconds in $CACHE/build-times.log
  local label=$1; shift
  local t0=$SECONDS
  "$@"
  local dt=$((SECONDS - t0))
  log "$label built in ${dt}s"
  echo "$(date -u +%FT%TZ) $label ${dt}s" >>"$CACHE/build-times.log"
}

# go install into a private GOBIN: helm and kwok have no replace directives, so `go install
# pkg@version` builds exactly their own go.mod, nothing mixes.
build_helm() {
  [ -x "$HELM_DIR/bin/helm" ] && return 0
  log "building helm $HELM_VERSION"
  mkdir -p "$HELM_DIR/bin"
  # helm's Makefile stamps its own version and the Kubernetes version it was built against
  # (used by `helm lint`/`template` as the default kubeVersion capability).
  local k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
  GOBIN="$HELM_DIR/bin.tmp" timed "helm-$HELM_VERSION" \
    nice -n 10 go install -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$HELM_DIR/bin.tmp/helm" "$HELM_DIR/bin/helm" && rmdir "$HELM_DIR/bin.tmp"
}

build_kwok() {
  [ -x "$KWOK_DIR/bin/kwok" ] && [ -d "$KWOK_DIR/stages" ] && return 0
  log "building kwok $KWOK_VERSION"
  mkdir -p "$KWOK_DIR/bin"
  local ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
  GOBIN="$KWOK_DIR/bin.tmp" timed "kwok-$KWOK_VERSION" \
    nice -n 10 go install -ldflags "$ld" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # The stage definitions ship inside the module; kwok exits without them.
  local src
  src=$(cd /tmp && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src/kustomize/stage" ] || die "kwok module has no kustomize/stage (looked in '$src')"
  rm -rf "$KWOK_DIR/stages.tmp" && cp -r "$src/kustomize/stage" "$KWOK_DIR/stages.tmp"
  chmod -R u+w "$KWOK_DIR/stages.tmp" && mv "$KWOK_DIR/stages.tmp" "$KWOK_DIR/stages"
  mv "$KWOK_DIR/bin.tmp/kwok" "$KWOK_DIR/bin/kwok" && rmdir "$KWOK_DIR/bin.tmp"
}

# etcd's server module replaces its sibling modules with ../ paths, so it cannot be `go install`ed
# by version: a wrapper module requires it and builds it.
build_etcd() {
  [ -x "$ETCD_DIR/bin/etcd" ] && return 0
  log "building etcd $ETCD_VERSION"
  local mod="$ETCD_DIR/module"
  mkdir -p "$mod" "$ETCD_DIR/bin"
  cat >"$mod/go.mod" <<EOF
module fanout.local/tools/etcd

go 1.26.0
EOF
  (
    cd "$mod"
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    timed "etcd-$ETCD_VERSION" nice -n 10 go build -trimpath -ldflags "-s -w" -o "$ETCD_DIR/bin/etcd.tmp" go.etcd.io/etcd/server/v3
  )
  mv "$ETCD_DIR/bin/etcd.tmp" "$ETCD_DIR/bin/etcd"
}

# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging
# paths; the wrapper replaces each one with its published k8s.io/X v0.MINOR.PATCH instead.
build_kubernetes() {
  local b complete=1
  for b in "${K8S_BINS[@]}"; do [ -x "$K8S_DIR/bin/$b" ] || complete=0; done
  [ "$complete" = 1 ] && return 0
  log "building kubernetes $K8S_VERSION (${K8S_BINS[*]})"
  local mod="$K8S_DIR/module" staging_version="v0.${K8S_VERSION#v1.}"
  mkdir -p "$mod" "$K8S_DIR/bin"
  local upstream_mod
  upstream_mod=$(cd /tmp && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$upstream_mod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION go.mod"
  local staging
  staging=$(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$upstream_mod" | sort -u)
  [ -n "$staging" ] || die "no staging replaces found in $upstream_mod"
  log "replacing $(echo "$staging" | wc -l) staging modules with $staging_version"
  {
    echo "module fanout.local/tools/kubernetes"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m $staging_version"; done
    echo ")"
    echo
    echo "tool ("
    for b in "${K8S_BINS[@]}"; do echo "	k8s.io/kubernetes/cmd/$b"; done
    echo ")"
  } >"$mod/go.mod"
  local ld="-s -w" p
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$mod"
    timed "kubernetes-$K8S_VERSION-mod-tidy" go mod tidy
    local t
    for b in "${K8S_BINS[@]}"; do
      [ -x "$K8S_DIR/bin/$b" ] && continue
      t=$K8S_DIR/bin/$b.tmp
      timed "$b-$K8S_VERSION" nice -n 10 go build -trimpath -ldflags "$ld" -o "$t" "k8s.io/kubernetes/cmd/$b"
      mv "$t" "$K8S_DIR/bin/$b"
    done
  )
}

# go_install DIR LABEL PKG@VERSION...: `go install` into DIR/bin through a private GOBIN, so a
# half-built tool never looks cached. Extra environment comes from the caller.
go_install() {
  local dir=$1 label=$2; shift 2
  mkdir -p "$dir/bin"
  rm -rf "$dir/bin.tmp"
  GOBIN="$dir/bin.tmp" timed "$label" nice -n 10 go install -trimpath "$@"
  mv "$dir"/bin.tmp/* "$dir/bin/" && rmdir "$dir/bin.tmp"
}

build_runc() {
  [ -x "$RUNC_DIR/bin/runc" ] && return 0
  log "building runc $RUNC_VERSION (cgo, with seccomp)"
  CGO_ENABLED=1 go_install "$RUNC_DIR" "runc-$RUNC_VERSION" -tags seccomp \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
}

build_containerd() {
  local b complete=1
  for b in "${CONTAINERD_BINS[@]}"; do [ -x "$CONTAINERD_DIR/bin/$b" ] || complete=0; done
  [ "$complete" = 1 ] && return 0
  log "building containerd $CONTAINERD_VERSION (${CONTAINERD_BINS[*]})"
  # btrfs is the one plugin that needs cgo; nothing here uses it.
  local pkgs=() m=github.com/containerd/containerd/v2
  for b in "${CONTAINERD_BINS[@]}"; do pkgs+=("$m/cmd/$b@$CONTAINERD_VERSION"); done
  go_install "$CONTAINERD_DIR" "containerd-$CONTAINERD_VERSION" -tags "no_btrfs no_devmapper" \
    -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=github.com/containerd/containerd/v2" \
    "${pkgs[@]}"
}

build_cni_plugins() {
  local p complete=1
  for p in "${CNI_PLUGINS[@]}"; do [ -x "$CNI_DIR/bin/${p#*/}" ] || complete=0; done
  [ "$complete" = 1 ] && return 0
  log "building CNI plugins $CNI_PLUGINS_VERSION (${CNI_PLUGINS[*]})"
  local pkgs=()
  for p in "${CNI_PLUGINS[@]}"; do pkgs+=("github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION"); done
  go_install "$CNI_DIR" "cni-plugins-$CNI_PLUGINS_VERSION" \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "${pkgs[@]}"
}

build_crictl() {
  [ -x "$CRICTL_DIR/bin/crictl" ] && return 0
  log "building crictl $CRICTL_VERSION"
  go_install "$CRICTL_DIR" "crictl-$CRICTL_VERSION" \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

# umoci's go.mod replaces go-mtree with a fork, so (like etcd) a wrapper module builds it with
# the same replace, read from umoci's own go.mod.
build_umoci() {
  [ -x "$UMOCI_DIR/bin/umoci" ] && return 0
  log "building umoci $UMOCI_VERSION"
  local mod="$UMOCI_DIR/module" upstream_mod
  mkdir -p "$mod" "$UMOCI_DIR/bin"
  upstream_mod=$(cd /tmp && go mod download -json "github.com/opencontainers/umoci@$UMOCI_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$upstream_mod" ] || die "could not download github.com/opencontainers/umoci@$UMOCI_VERSION go.mod"
  {
    echo "module fanout.local/tools/umoci"
    echo
    echo "go 1.26.0"
    echo
    echo "require github.com/opencontainers/umoci $UMOCI_VERSION"
    echo
    grep '^replace ' "$upstream_mod"
    echo
    echo "tool github.com/opencontainers/umoci/cmd/umoci"
  } >"$mod/go.mod"
  (
    cd "$mod"
    go mod tidy
    timed "umoci-$UMOCI_VERSION" nice -n 10 go build -trimpath \
      -ldflags "-s -w -X main.version=${UMOCI_VERSION#v}" -o "$UMOCI_DIR/bin/umoci.tmp" github.com/opencontainers/umoci/cmd/umoci
  )
  mv "$UMOCI_DIR/bin/umoci.tmp" "$UMOCI_DIR/bin/umoci"
}

link_bindir() {
  mkdir -p "$BIN_DIR"
  local b
  for b in "${K8S_BINS[@]}"; do [ -x "$K8S_DIR/bin/$b" ] && ln -sfn "$K8S_DIR/bin/$b" "$BIN_DIR/$b"; done
  [ -x "$ETCD_DIR/bin/etcd" ] && ln -sfn "$ETCD_DIR/bin/etcd" "$BIN_DIR/etcd"
  [ -x "$HELM_DIR/bin/helm" ] && ln -sfn "$HELM_DIR/bin/helm" "$BIN_DIR/helm"
  [ -x "$KWOK_DIR/bin/kwok" ] && ln -sfn "$KWOK_DIR/bin/kwok" "$BIN_DIR/kwok"
  [ -d "$KWOK_DIR/stages" ] && ln -sfn "$KWOK_DIR/stages" "$BIN_DIR/kwok-stages"
  for b in "${CONTAINERD_BINS[@]}"; do [ -x "$CONTAINERD_DIR/bin/$b" ] && ln -sfn "$CONTAINERD_DIR/bin/$b" "$BIN_DIR/$b"; done
  [ -x "$RUNC_DIR/bin/runc" ] && ln -sfn "$RUNC_DIR/bin/runc" "$BIN_DIR/runc"
  [ -x "$CRICTL_DIR/bin/crictl" ] && ln -sfn "$CRICTL_DIR/bin/crictl" "$BIN_DIR/crictl"
  [ -x "$UMOCI_DIR/bin/umoci" ] && ln -sfn "$UMOCI_DIR/bin/umoci" "$BIN_DIR/umoci"
  [ -d "$CNI_DIR/bin" ] && ln -sfn "$CNI_DIR/bin" "$BIN_DIR/cni-bin"
  true
}

# Serialises concurrent builds (two scripts asking for the same tool at once).
with_lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  "$@"
  flock -u 9
}

ensure_all() {
  ensure_packages
  build_helm; link_bindir
  build_kwok; link_bindir
  build_etcd; link_bindir
  build_kubernetes; link_bindir
  build_runc; link_bindir
  build_containerd; link_bindir
  build_cni_plugins; link_bindir
  build_crictl; link_bindir
  build_umoci; link_bindir
}

tool_path() {
  local name=$1
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) local f="$K8S_DIR/bin/$name" builder=build_kubernetes ;;
    containerd|containerd-shim-runc-v2|ctr) local f="$CONTAINERD_DIR/bin/$name" builder=build_containerd ;;
    runc) local f="$RUNC_DIR/bin/runc" builder=build_runc ;;
    crictl) local f="$CRICTL_DIR/bin/crictl" builder=build_crictl ;;
    umoci) local f="$UMOCI_DIR/bin/umoci" builder=build_umoci ;;
    cni-bin) local f="$CNI_DIR/bin" builder=build_cni_plugins ;;
    etcd) local f="$ETCD_DIR/bin/etcd" builder=build_etcd ;;
    helm) local f="$HELM_DIR/bin/helm" builder=build_helm ;;
    kwok) local f="$KWOK_DIR/bin/kwok" builder=build_kwok ;;
    kwok-stages) local f="$KWOK_DIR/stages" builder=build_kwok ;;
    *) die "unknown tool '$name'" ;;
  esac
  if [ ! -e "$f" ]; then
    ensure_packages
    with_lock "$builder"
    link_bindir
  fi
  echo "$f"
}

case "${1:-}" in
  ensure) with_lock ensure_all ;;
  path) [ $# -eq 2 ] || die "usage: $0 path NAME"; tool_path "$2" ;;
  bindir) link_bindir; echo "$BIN_DIR" ;;
  versions) printf '%s\n' $ALL_VERSIONS | tr = ' ' ;;
  *) echo "usage: $0 ensure | path NAME | bindir | versions" >&2; exit 2 ;;
esac
