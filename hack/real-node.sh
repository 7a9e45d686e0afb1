# Real nodes for the test cluster: a kubelet, containerd (with runc and the CNI plugins) and
# kube-proxy per node, running real containers. Sourced by hack/cluster.sh (which defines log,
# die, in_ns, kubectl_ns, wait_for, stop_pids, pid_is_ours, write_kubeconfig, $DIR, $NETNS,
# $HACK_DIR and the addresses); not a command of its own.
#
# A real node is what kind makes of a container, made here of namespaces:
# - its own network namespace `$NETNS.NAME`, joined to the test namespace by a veth on the
#   bridge `fnodes` (10.200.64.1/24 there; the node is 10.200.64.(10+i)), default route back
#   through it, so every packet stays inside the test namespace's closed world;
# - its own mount namespace (a bind-mounted namespace file under /run/fanout-nodes) holding a
#   sysfs of its network namespace (with the host's cgroup v1 hierarchies moved under it) and a
#   private directory bound over each host path a node owns: /var/lib/kubelet, /var/lib/containerd,
#   /run/containerd, /var/log/pods, /var/log/containers, /run/netns, /var/lib/cni, /etc/cni/net.d,
#   /run/fanout (the FanoutGroups' default socket root). Two nodes on one machine therefore never
#   share a hostPath, exactly as two machines would not;
# - its own cgroup subtree `/fanout-$NETNS/NAME` in every v1 hierarchy (kubelet `cgroupRoot`);
# - pods get 10.200.(64+i).0/24 from host-local IPAM on the node's bridge `cni0`; the test
#   namespace routes that /24 to the node. 10.200.64.0/19 is therefore not routed to `lo` there.
# Every process is started with nsenter (not `ip netns exec`, which remounts /sys without the
# cgroup hierarchies) and recorded by pid; remove-real-node stops them, every container process
# found in the node's cgroups, and removes the node's namespaces, cgroups and state.

REAL_NODE_BRIDGE=fnodes
REAL_NODE_GATEWAY=10.200.64.1
REAL_NODES_CIDR=10.200.64.0/19
REAL_NODE_MAX=30
MNT_DIR=/run/fanout-nodes
# kubelet insists on these kernel settings (it sets them when they differ; the machine is
# shared with the host, as kind's nodes are). The originals are saved and restored on down.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

HOST_NS_HOLDER=fanout-host-ns-holder

# `up` starts a sleeping process in the host's mount and network namespaces and keeps its pid:
# real nodes must be made from there (cgroups, mounts), and callers inside the test namespace
# (the tests, through `hack/cluster.sh exec`) are not there: `ip netns exec` gave them a mount
# namespace of their own, with a /sys that has no cgroup hierarchies.
start_host_ns_holder() {
  (exec -a "$HOST_NS_HOLDER" sleep infinity) >/dev/null 2>&1 </dev/null &
  echo $! >"$DIR/pids/$HOST_NS_HOLDER"
}

# run_on_host CMD ARGS...: re-runs `hack/cluster.sh CMD ARGS...` in the host's namespaces unless
# this process is already there.
run_on_host() {
  local pid; pid=$(cat "$DIR/pids/$HOST_NS_HOLDER" 2>/dev/null || true)
  if [ -z "$pid" ] || ! pid_is_ours "$HOST_NS_HOLDER" "$pid"; then
    die "the cluster is not up (no $HOST_NS_HOLDER process): run $0 up first"
  fi
  if [ "$(readlink /proc/self/ns/mnt)" != "$(readlink "/proc/$pid/ns/mnt")" ] \
    || [ "$(readlink /proc/self/ns/net)" != "$(readlink "/proc/$pid/ns/net")" ]; then
    exec nsenter --mount="/proc/$pid/ns/mnt" --net="/proc/$pid/ns/net" -- "$HACK_DIR/cluster.sh" "$@"
  fi
}

real_node_dir() { echo "$DIR/real-nodes/$1"; }
real_node_netns() { echo "$NETNS.$1"; }
real_node_mnt() { echo "$MNT_DIR/$NETNS.$1.mnt"; }
real_node_cgroup() { echo "/fanout-$NETNS/$1"; }
# The hierarchies mounted on this machine, as directory names under /sys/fs/cgroup: the v1 ones
# (cpu, memory, name=systemd, ...) and the hybrid layout's v2 `unified` one, where runc also puts
# every container.
cgroup_hierarchies() {
  local d
  for d in /sys/fs/cgroup/*/; do
    d=${d%/}
    case "$(stat -fc %T "$d")" in cgroupfs|cgroup2fs) basename "$d" ;; esac
  done
  return 0
}

# in_node NAME CMD...: runs CMD in the node's network and mount namespaces.
in_node() {
  local name=$1; shift
  nsenter --mount="$(real_node_mnt "$name")" --net="/run/netns/$(real_node_netns "$name")" -- "$@"
}

# Pids from real-NAME-COMPONENT pid files that still run a command of this node (its config
# files live in the node's directory, so the command line names it).
our_node_pids() {
  local name=$1 comp pid; shift
  for comp in "$@"; do
    pid=$(cat "$DIR/pids/real-$name-$comp" 2>/dev/null) || continue
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(real_node_dir "$name")/" && echo "$pid"
  done
  return 0
}

# start_in_node NAME COMPONENT CMD...: like `start`, inside the node; pid in pids/real-NAME-COMPONENT.
start_in_node() {
  local name=$1 comp=$2; shift 2
  nsenter --mount="$(real_node_mnt "$name")" --net="/run/netns/$(real_node_netns "$name")" -- "$@" \
    >"$(real_node_dir "$name")/logs/$comp.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/real-$name-$comp"
}

ensure_real_node_packages() {
  local missing=()
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v python3 >/dev/null || missing+=(python3)
  [ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || missing+=(libseccomp2)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# The next free node index 1..REAL_NODE_MAX (the lowest unused: a removed node's index is reused).
allocate_real_node_index() {
  local i
  for i in $(seq 1 "$REAL_NODE_MAX"); do
    if ! grep -qx "$i" "$DIR"/real-nodes/*/index 2>/dev/null; then echo "$i"; return 0; fi
  done
  die "all $REAL_NODE_MAX real-node slots are in use"
}

# The bridge in the test namespace that every real node's veth joins (made once).
ensure_node_bridge() {
  in_ns ip link show "$REAL_NODE_BRIDGE" >/dev/null 2>&1 && return 0
  in_ns ip link add "$REAL_NODE_BRIDGE" type bridge
  in_ns ip addr add "$REAL_NODE_GATEWAY/24" dev "$REAL_NODE_BRIDGE"
  in_ns ip link set "$REAL_NODE_BRIDGE" up
  # The test namespace routes between nodes (pod to pod across nodes, node to apiserver).
  in_ns sysctl -qw net.ipv4.ip_forward=1
}

save_kernel_tunables() {
  [ -f "$DIR/kernel-tunables.saved" ] && return 0
  local k
  for k in "${KUBELET_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$DIR/kernel-tunables.saved"
}

restore_kernel_tunables() {
  [ -f "$DIR/kernel-tunables.saved" ] || return 0
  local line
  while read -r line; do sysctl -qw "$line" || log "warning: could not restore $line"; done <"$DIR/kernel-tunables.saved"
  rm -f "$DIR/kernel-tunables.saved"
}

# Certificates of the node's kubelet (system:node:NAME in system:nodes, what the Node
# authorizer and NodeRestriction expect) and kube-proxy (system:kube-proxy, bound by the
# default system:node-proxier ClusterRoleBinding).
make_node_certs() {
  local name=$1 dir; dir="$(real_node_dir "$name")/pki"
  mkdir -p "$dir"
  local ca="$DIR/pki"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$dir/client.ext"
  local who subject
  for who in kubelet kube-proxy; do
    case $who in
      kubelet) subject="/O=system:nodes/CN=system:node:$name" ;;
      kube-proxy) subject="/CN=system:kube-proxy" ;;
    esac
    openssl req -newkey rsa:2048 -nodes -keyout "$dir/$who.key" -out "$dir/$who.csr" -subj "$subject" 2>/dev/null
    openssl x509 -req -in "$dir/$who.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
      -CAserial "$dir/ca.srl" -out "$dir/$who.crt" -days 3650 -extfile "$dir/client.ext" 2>/dev/null
    write_kubeconfig "$dir/$who.kubeconfig" "$who" default "    client-certificate: $dir/$who.crt
    client-key: $dir/$who.key"
  done
  rm -f "$dir"/*.csr "$dir/client.ext" "$dir/ca.srl"
  chmod 600 "$dir"/*.key
}

# The node's network namespace, its link to the test namespace, and the route to its pods.
make_node_network() {
  local name=$1 index=$2 node_ip=$3 pod_cidr=$4
  local netns; netns=$(real_node_netns "$name")
  ip netns add "$netns"
  ensure_node_bridge
  in_ns ip link add "fnv$index" type veth peer name eth0 netns "$netns"
  in_ns ip link set "fnv$index" master "$REAL_NODE_BRIDGE" up
  ip -n "$netns" link set lo up
  ip -n "$netns" addr add "$node_ip/24" dev eth0
  ip -n "$netns" link set eth0 up
  ip -n "$netns" route add default via "$REAL_NODE_GATEWAY"
  in_ns ip route add "$pod_cidr" via "$node_ip"
  ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1
}

# The node's mount namespace: its own sysfs (with the cgroup hierarchies), its own host paths.
make_node_mounts() {
  local name=$1 dir mnt netns
  dir=$(real_node_dir "$name"); mnt=$(real_node_mnt "$name"); netns=$(real_node_netns "$name")
  # A namespace file can only be bind-mounted onto a private mount (as `ip netns` does for
  # /run/netns).
  mkdir -p "$MNT_DIR"
  if ! mountpoint -q "$MNT_DIR"; then mount --bind "$MNT_DIR" "$MNT_DIR"; fi
  mount --make-private "$MNT_DIR"
  touch "$mnt"
  unshare --mount="$mnt" --propagation private true
  local p paths=(/var/lib/kubelet /var/lib/containerd /run/containerd /var/log/pods /var/log/containers /run/netns /var/lib/cni /etc/cni/net.d /run/fanout)
  for p in "${paths[@]}"; do mkdir -p "$dir/root$p"; done
  in_node "$name" sh -euc '
    dir=$1; shift
    # sysfs shows the network namespace of whoever mounts it; keep the cgroup hierarchies.
    mkdir -p "$dir/.cgroup"
    mount --rbind /sys/fs/cgroup "$dir/.cgroup"
    mount -t sysfs sysfs /sys
    mount --move "$dir/.cgroup" /sys/fs/cgroup
    for p in "$@"; do
      mkdir -p "$p"
      mount --bind "$dir/root$p" "$p"
    done
    # A node root with shared propagation, as on a systemd host (kubelet volume mounts reach
    # containerd and runc, which share this namespace).
    mount --make-rshared /
  ' sh "$dir" "${paths[@]}"
}

make_node_cgroups() {
  local name=$1 h root; root=$(real_node_cgroup "$name")
  for h in $(cgroup_hierarchies); do
    mkdir -p "/sys/fs/cgroup/$h$root"
    if [ "$h" = cpuset ]; then
      # A new cpuset cgroup starts with no CPUs and no memory nodes: inherit the root's.
      local d=/sys/fs/cgroup/cpuset part
      for part in ${root//\// }; do
        d="$d/$part"
        [ -n "$(cat "$d/cpuset.cpus")" ] || cat /sys/fs/cgroup/cpuset/cpuset.cpus >"$d/cpuset.cpus"
        [ -n "$(cat "$d/cpuset.mems")" ] || cat /sys/fs/cgroup/cpuset/cpuset.mems >"$d/cpuset.mems"
      done
    fi
  done
}

write_node_configs() {
  local name=$1 node_ip=$2 pod_cidr=$3 dir bin
  dir=$(real_node_dir "$name"); bin=$BIN
  local gateway=${pod_cidr%.0/24}.1
  # shellcheck disable=SC1090
  . "$IMAGES_ENV"
  cat >"$dir/containerd.toml" <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  # Images are imported (hack/image.sh), never pulled: nothing here can reach a registry.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$FANOUT_PAUSE_REF"

[plugins.'io.containerd.cri.v1.runtime']
  # The machine withholds CAP_SYS_RESOURCE: no process may lower its oom_score_adj, so the
  # scores kubelet asks for (-997 for Guaranteed pods, -998 for sandboxes) are clamped to ours.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$bin/cni-bin"]
    conf_dir = "/etc/cni/net.d"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$bin/runc"
        SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
EOF
  mkdir -p "$dir/root/etc/cni/net.d"
  cat >"$dir/root/etc/cni/net.d/10-fanout.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fanout-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 10\n' >"$dir/crictl.yaml"
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has a cgroup v1 (hybrid) hierarchy; kubelet 1.35+ refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
# Every pod cgroup of this node lives under its own subtree (two nodes share one machine).
cgroupRoot: $(real_node_cgroup "$name")
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: $node_ip
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
# No cluster DNS runs here; pods get an empty resolv.conf instead of the machine's.
resolvConf: ""
# No swap on this machine; kubelet would refuse to start with it unless told.
failSwapOn: false
# Imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
serializeImagePulls: false
registerNode: true
# Quick status for the tests (defaults: 10 s / 5 min / 1 min sync).
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 10s
EOF
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $dir/pki/kube-proxy.kubeconfig
hostnameOverride: $name
mode: iptables
clusterCIDR: $REAL_NODES_CIDR
bindAddress: $node_ip
healthzBindAddress: $node_ip:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine-wide conntrack settings alone (not ours to change, and not per-namespace).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 5s
  minSyncPeriod: 0s
EOF
}

node_ready() {
  [ "$(kubectl_ns get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

containerd_ready() { in_node "$1" "$BIN/ctr" --address /run/containerd/containerd.sock version; }

# add-real-node NAME: a real node, registered and Ready, with the images of hack/image.sh imported.
cmd_add_real_node() {
  [ $# -eq 1 ] || die "usage: $0 add-real-node NAME"
  local name=$1
  [[ $name =~ ^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$ ]] || die "node name '$name': lower-case letters, digits and '-', at most 32"
  [ -d "$(real_node_dir "$name")" ] && die "real node $name exists already (remove-real-node first)"
  ensure_real_node_packages
  BIN=$(bindir)
  local b
  for b in kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc crictl; do
    [ -x "$BIN/$b" ] || "$HACK_DIR/tools.sh" path "$b" >/dev/null
  done
  [ -d "$BIN/cni-bin" ] || "$HACK_DIR/tools.sh" path cni-bin >/dev/null
  BIN=$(bindir)
  IMAGES_ENV="${FANOUT_IMAGES_ENV:-$HACK_DIR/../target/image/images.env}"
  [ -f "$IMAGES_ENV" ] || die "no images: run hack/image.sh first ($IMAGES_ENV missing)"
  # shellcheck disable=SC1090
  . "$IMAGES_ENV"
  local t0; t0=$(now_ms)

  mkdir -p "$DIR/real-nodes"
  exec 7>"$DIR/real-nodes/.lock"
  flock 7
  local index; index=$(allocate_real_node_index)
  local dir; dir=$(real_node_dir "$name")
  mkdir -p "$dir/logs"
  echo "$index" >"$dir/index"
  flock -u 7
  local node_ip="10.200.64.$((10 + index))" pod_cidr="10.200.$((64 + index)).0/24"
  echo "$node_ip" >"$dir/ip"

  phase_start
  save_kernel_tunables
  make_node_certs "$name"
  make_node_network "$name" "$index" "$node_ip" "$pod_cidr"
  make_node_mounts "$name"
  make_node_cgroups "$name"
  write_node_configs "$name" "$node_ip" "$pod_cidr"
  phase_end "real node $name: namespaces, cgroups, certificates"

  phase_start
  start_in_node "$name" containerd "$BIN/containerd" --config "$dir/containerd.toml"
  wait_for "containerd on $name" 60 "" containerd_ready "$name"
  # Into the CRI's namespace, named REPOSITORY:TAG and REPOSITORY@DIGEST, so pods may name
  # either (the chart's image.digest gives the second).
  local archive repository
  for archive in "$FANOUT_PAUSE_ARCHIVE=$FANOUT_PAUSE_REPOSITORY" "$FANOUT_IMAGE_ARCHIVE=$FANOUT_IMAGE_REPOSITORY"; do
    repository=${archive#*=}; archive=${archive%=*}
    if ! in_node "$name" "$BIN/ctr" --address /run/containerd/containerd.sock -n k8s.io \
      images import --local --digests --base-name "$repository" "$archive" >>"$dir/logs/image-import.log" 2>&1; then
      tail -n 20 "$dir/logs/image-import.log" >&2
      die "could not import $archive into containerd on $name"
    fi
  done
  phase_end "real node $name: containerd up, images imported"

  phase_start
  start_in_node "$name" kubelet "$BIN/kubelet" --config="$dir/kubelet.yaml" \
    --kubeconfig="$dir/pki/kubelet.kubeconfig" --hostname-override="$name" --node-ip="$node_ip" \
    --node-labels="fanout.dev/node-kind=real" --v=1
  start_in_node "$name" kube-proxy "$BIN/kube-proxy" --config="$dir/kube-proxy.yaml" --v=1
  wait_for "node $name Ready" 120 "real-$name-kubelet" node_ready "$name"
  phase_end "real node $name: kubelet and kube-proxy, node Ready"
  log "real node $name ($node_ip, pods $pod_cidr) up in $(( $(now_ms) - t0 )) ms"
  echo "$name $node_ip"
}

# Every pid that belongs to the node: its components, the shims containerd started (in the
# node's mount namespace) and the container processes (in the node's cgroups).
real_node_pids() {
  local name=$1 mnt_ino="" pid h root
  root=$(real_node_cgroup "$name")
  if [ -e "$(real_node_mnt "$name")" ]; then
    mnt_ino=$(stat -L -c %i "$(real_node_mnt "$name")" 2>/dev/null || true)
  fi
  {
    for h in $(cgroup_hierarchies); do
      [ -d "/sys/fs/cgroup/$h$root" ] && find "/sys/fs/cgroup/$h$root" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
    if [ -n "$mnt_ino" ] && [ "$mnt_ino" != 0 ]; then
      for pid in /proc/[0-9]*; do
        [ "$(stat -L -c %i "$pid/ns/mnt" 2>/dev/null)" = "$mnt_ino" ] && echo "${pid#/proc/}"
      done
    fi
  } | sort -un
}

cmd_remove_real_node() {
  [ $# -eq 1 ] || die "usage: $0 remove-real-node NAME"
  local name=$1 dir
  dir=$(real_node_dir "$name")
  [ -d "$dir" ] || { log "no real node $name"; return 0; }
  BIN=$(bindir)
  local t0; t0=$(now_ms)
  # The kubelet first, so nothing restarts the pods stopped next.
  local pids
  mapfile -t pids < <(our_node_pids "$name" kubelet kube-proxy)
  stop_pids "kubelet and kube-proxy of $name" "${pids[@]}"
  if [ -S "$dir/root/run/containerd/containerd.sock" ]; then
    # Pods stopped through the runtime, so each gets its SIGTERM and its network torn down.
    in_node "$name" timeout 60 "$BIN/crictl" --config "$dir/crictl.yaml" rmp --all --force >/dev/null 2>&1 || log "warning: crictl rmp on $name failed"
  fi
  mapfile -t pids < <(our_node_pids "$name" containerd)
  stop_pids "containerd of $name" "${pids[@]}"
  mapfile -t pids < <(real_node_pids "$name")
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping processes left on $name: ${pids[*]}"
    stop_pids "leftovers of $name" "${pids[@]}"
  fi
  rm -f "$DIR/pids/real-$name-"*
  # The namespace file is the last reference to the mount namespace: every mount the node made
  # (container root filesystems, volumes, pod network namespaces) goes with it.
  local mnt; mnt=$(real_node_mnt "$name")
  if mountpoint -q "$mnt" 2>/dev/null || grep -q " $mnt " /proc/self/mountinfo; then umount "$mnt" || umount -l "$mnt"; fi
  rm -f "$mnt"
  local netns; netns=$(real_node_netns "$name")
  if netns_exists "$netns"; then ip netns del "$netns"; fi
  local index; index=$(cat "$dir/index" 2>/dev/null || true)
  if [ -n "$index" ] && netns_exists "$NETNS"; then
    in_ns ip route del "10.200.$((64 + index)).0/24" 2>/dev/null || true
    in_ns ip link del "fnv$index" 2>/dev/null || true
  fi
  local h root; root=$(real_node_cgroup "$name")
  for h in $(cgroup_hierarchies); do
    [ -d "/sys/fs/cgroup/$h$root" ] && find "/sys/fs/cgroup/$h$root" -depth -type d -exec rmdir {} + 2>/dev/null
    rmdir "/sys/fs/cgroup/$h${root%/*}" 2>/dev/null || true
  done
  if api_ready >/dev/null 2>&1; then
    kubectl_ns delete node "$name" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    kubectl_ns delete pods --all-namespaces --field-selector "spec.nodeName=$name" \
      --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  # Nothing of the node may be left for the next `up`: say what is, and fail.
  local left=()
  mapfile -t pids < <(real_node_pids "$name")
  [ ${#pids[@]} -eq 0 ] || left+=("processes ${pids[*]}")
  for h in $(cgroup_hierarchies); do
    [ -d "/sys/fs/cgroup/$h$root" ] && left+=("cgroup /sys/fs/cgroup/$h$root")
  done
  [ ! -e "$mnt" ] || left+=("mount namespace file $mnt")
  ! netns_exists "$netns" || left+=("network namespace $netns")
  if [ -n "$index" ] && netns_exists "$NETNS" && in_ns ip link show "fnv$index" >/dev/null 2>&1; then
    left+=("veth fnv$index")
  fi
  [ ! -e "$dir" ] || left+=("state directory $dir")
  if [ ${#left[@]} -gt 0 ]; then
    die "real node $name not removed cleanly; left: ${left[*]}"
  fi
  if [ -z "$(ls -A "$DIR/real-nodes" 2>/dev/null | grep -v '^\.lock$')" ]; then restore_kernel_tunables; fi
  log "real node $name removed in $(( $(now_ms) - t0 )) ms"
}

# Every real node of this cluster, including ones whose state directory was lost (a crash):
# found by their namespace files and network namespaces.
real_node_names() {
  {
    ls "$DIR/real-nodes" 2>/dev/null | grep -v '^\.lock$'
    ls "$MNT_DIR" 2>/dev/null | sed -n "s/^$NETNS\.\(.*\)\.mnt$/\1/p"
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$NETNS\.\(.*\)$/\1/p"
  } | sort -u
}

remove_all_real_nodes() {
  local name
  for name in $(real_node_names); do
    mkdir -p "$(real_node_dir "$name")"
    cmd_remove_real_node "$name"
  done
  restore_kernel_tunables
  # The private mount holding the namespace files, once no cluster on this machine uses it.
  if mountpoint -q "$MNT_DIR" && [ -z "$(ls -A "$MNT_DIR")" ]; then umount "$MNT_DIR" && rmdir "$MNT_DIR"; fi
  return 0
}

# node-exec NAME CMD...: CMD in the node's namespaces (as `docker exec` into a kind node).
cmd_node_exec() {
  [ $# -ge 2 ] || die "usage: $0 node-exec NAME CMD..."
  local name=$1; shift
  [ -e "$(real_node_mnt "$name")" ] || die "no real node $name"
  BIN=$(bindir)
  in_node "$name" env PATH="$BIN:$PATH" CRI_CONFIG_FILE="$(real_node_dir "$name")/crictl.yaml" \
    CONTAINERD_ADDRESS=/run/containerd/containerd.sock CONTAINERD_NAMESPACE=k8s.io "$@"
}
