#!/usr/bin/env bash
# A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok) running entirely inside a network namespace this script creates.
#
#   hack/cluster.sh up                    (re)create the namespace and start everything
#   hack/cluster.sh down                  stop every process it started (by pid) and delete the namespace
#   hack/cluster.sh env                   print `export ...` lines (KUBECONFIG, PATH, addresses)
#   hack/cluster.sh exec CMD...           run CMD inside the namespace with KUBECONFIG and PATH set
#   hack/cluster.sh add-node NAME [IP]    create a fake kwok node with its own InternalIP
#   hack/cluster.sh remove-node NAME      delete a fake node and the pods bound to it
#   hack/cluster.sh add-real-node NAME    start a real node (kubelet, containerd, runc, CNI, kube-proxy)
#                                         running the images of hack/image.sh; see hack/real-node.sh
#   hack/cluster.sh remove-real-node NAME stop it and remove every trace (processes, mounts, cgroups,
#                                         namespaces, state, the Node object)
#   hack/cluster.sh node-exec NAME CMD... run CMD inside a real node's namespaces (crictl, ctr, ls)
#   hack/cluster.sh sa-kubeconfig NS SA   write a kubeconfig authenticating as that ServiceAccount
#                                         (TokenRequest token, default 2h), print its path
#   hack/cluster.sh stop COMPONENT        stop etcd or kube-apiserver by pid (an outage, for fault tests)
#   hack/cluster.sh start COMPONENT       start it again with the same flags and data; waits until ready
#   hack/cluster.sh status                show the processes and whether the API answers
#
# Addresses (all inside the namespace; 10.200.0.0/16 but for the real nodes' 10.200.64.0/19 is
# routed to `lo` there, so every such address is local to the namespace; the namespace has no
# other interface than the real nodes' bridge and no default route, so no packet can leave it):
#   10.200.0.1:6443        kube-apiserver (serving cert SANs: this IP, 127.0.0.1, 10.200.96.1)
#   127.0.0.1:2379/2380    etcd client/peer (namespace loopback)
#   10.200.1.1 ...         node InternalIPs handed out by add-node (10.200.1-63.1-250)
#   10.200.64.1/24         bridge `fnodes` to the real nodes; real node i is 10.200.64.(10+i)
#   10.200.65.0/24 ...     pods of real node i: 10.200.(64+i).0/24, routed to that node
#   10.200.96.0/20         service cluster IP range (kubernetes service = 10.200.96.1)
#   10.200.128.0/17        pod IPs assigned by kwok (32766 addresses)
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NETNS="${FANOUT_NETNS:-fanout-test}"
DIR="${FANOUT_CLUSTER_DIR:-/tmp/fanout-cluster}"

TEST_RANGE=10.200.0.0/16
# TEST_RANGE minus the real nodes' 10.200.64.0/19: these are routed to `lo` (local addresses).
LOCAL_RANGES=(10.200.0.0/18 10.200.96.0/19 10.200.128.0/17)
APISERVER_IP=10.200.0.1
APISERVER_PORT=6443
KWOK_DEFAULT_NODE_IP=10.200.0.2
SERVICE_CIDR=10.200.96.0/20
KUBERNETES_SERVICE_IP=10.200.96.1
POD_CIDR=10.200.128.0/17
ETCD_CLIENT=http://127.0.0.1:2379
ETCD_PEER=http://127.0.0.1:2380
SA_ISSUER=https://kubernetes.default.svc.cluster.local

# The TaintNodesByCondition admission plugin is off: it puts node.kubernetes.io/not-ready on
# every new node and only node-lifecycle-controller takes it off again; that controller also
# taints and evicts nodes whose kwok heartbeat lags, which a busy 2-core machine invites. Without
# both, a fake node is schedulable as soon as it exists, for pods without tolerations too.
#
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# Controllers the tests need. endpointslice-controller serves selector Services;
# endpointslice-mirroring is left off: fanout writes its own slices for a selector-less Service.
# pod-garbage-collector removes pods of nodes that no longer exist (backstop for remove-node);
# clusterrole-aggregation fills aggregated ClusterRoles; service-cidr keeps ServiceCIDR status.
KCM_CONTROLLERS=daemonset-controller,deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,endpointslice-controller,pod-garbage-collector-controller,clusterrole-aggregation-controller,service-cidr-controller

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_packages() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

bindir() { "$HACK_DIR/tools.sh" bindir; }
netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"; }
in_ns() { ip netns exec "$NETNS" "$@"; }
kubectl_ns() { in_ns "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

now_ms() { date +%s%3N; }
phase_start() { PHASE_T0=$(now_ms); }
phase_end() { log "phase $1: $(( $(now_ms) - PHASE_T0 )) ms"; }

# ---------------------------------------------------------------------------------------------
# certificates

make_certs() {
  local c="$DIR/pki"
  mkdir -p "$c"
  (
    cd "$c"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=fanout-test-ca" 2>/dev/null
    cat >apiserver.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$APISERVER_IP,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    cat >client.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
    # One admin identity (system:masters) shared by kubectl, helm and the control-plane
    # components: simplest, and RBAC for the fanout chart is proven with its own SA token.
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj "/O=system:masters/CN=fanout-admin" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext ca.srl
    chmod 600 ./*.key
  )
  write_kubeconfig "$DIR/kubeconfig" fanout-admin default "    client-certificate: $c/admin.crt
    client-key: $c/admin.key"
}

# ---------------------------------------------------------------------------------------------
# processes

# start NAME CMD...: runs CMD inside the namespace in the background, logs to logs/NAME.log,
# records the pid. A plain background command (not a shell function: that would fork a subshell)
# whose `ip netns exec` execs the component, so $! is the component's own pid.
start() {
  local name=$1; shift
  # Appends: a component started again (`start` after `stop`) keeps its earlier log.
  ip netns exec "$NETNS" "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
}

# The pid still belongs to the process we started (not a recycled pid)?
pid_is_ours() {
  local name=$1 pid=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" 
}

# stop_pids LABEL PID...: SIGTERM to all, SIGKILL to those still alive after 10 s.
stop_pids() {
  local label=$1; shift
  [ $# -gt 0 ] || return 0
  local t0; t0=$(now_ms)
  kill -TERM "$@" 2>/dev/null || true
  local _ pid left
  for _ in $(seq 1 100); do
    left=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    if [ ${#left[@]} -eq 0 ]; then
      log "stopped $label in $(( $(now_ms) - t0 )) ms"
      return 0
    fi
    sleep 0.1
  done
  log "$label: ${left[*]} ignored SIGTERM for 10s, sending SIGKILL"
  kill -KILL "${left[@]}" 2>/dev/null || true
}

alive() { local name=$1 pid; pid=$(cat "$DIR/pids/$name" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }

wait_for() { # wait_for DESCRIPTION TIMEOUT_S COMPONENT CMD...: poll CMD until it succeeds
  local what=$1 timeout=$2 comp=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$comp" ] && ! alive "$comp"; then
      tail -n 30 "$DIR/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for $what (log: $DIR/logs/$comp.log)"
    fi
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout}s waiting for $what (logs: $DIR/logs)"
    sleep 0.2
  done
}

api_ready() {
  in_ns curl -sf --max-time 2 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" \
    --key "$DIR/pki/admin.key" "https://$APISERVER_IP:$APISERVER_PORT/readyz" 
}

etcd_ready() { in_ns curl -sf --max-time 2 "$ETCD_CLIENT/health"; }

# etcd and kube-apiserver are started by `up` and again by `start` after a `stop` (fault tests),
# with the same flags and the same data directory, so a restart keeps the cluster's state.
start_etcd() {
  start etcd "$BIN/etcd" --name fanout --data-dir "$DIR/etcd" \
    --listen-client-urls "$ETCD_CLIENT" --advertise-client-urls "$ETCD_CLIENT" \
    --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
    --initial-cluster "fanout=$ETCD_PEER" --unsafe-no-fsync=true \
    --quota-backend-bytes=$((4 * 1024 * 1024 * 1024))
  wait_for "etcd health" 30 etcd etcd_ready
}

start_apiserver() {
  local p="$DIR/pki"
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="$ETCD_CLIENT" \
    --bind-address="$APISERVER_IP" --advertise-address="$APISERVER_IP" --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-admission-plugins=NodeRestriction \
    --disable-admission-plugins=TaintNodesByCondition \
    --kubelet-client-certificate="$p/admin.crt" --kubelet-client-key="$p/admin.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --enable-priority-and-fairness=false --max-requests-inflight=0 --max-mutating-requests-inflight=0 \
    --profiling=false --v=1
  wait_for "kube-apiserver /readyz" 120 kube-apiserver api_ready
}

# ---------------------------------------------------------------------------------------------
# commands

# Pids from our pid files that still belong to the component named (others are left alone).
our_pids() {
  local name pid
  for name in "$@"; do
    pid=$(cat "$DIR/pids/$name" 2>/dev/null) || continue
    pid_is_ours "$name" "$pid" && echo "$pid"
  done
  return 0
}

# stop COMPONENT / start COMPONENT: a control-plane outage for the fault tests. Only etcd and
# kube-apiserver: the rest have nothing to lose across a restart that the tests need to see.
restartable() {
  case "$1" in etcd | kube-apiserver) ;; *) die "stop/start: COMPONENT is etcd or kube-apiserver, not '$1'" ;; esac
}

cmd_stop_component() {
  local name=${1:?usage: cluster.sh stop etcd|kube-apiserver}
  restartable "$name"
  local pids
  mapfile -t pids < <(our_pids "$name")
  [ ${#pids[@]} -gt 0 ] || die "$name is not running"
  stop_pids "$name" "${pids[@]}"
  rm -f "$DIR/pids/$name"
}

cmd_start_component() {
  local name=${1:?usage: cluster.sh start etcd|kube-apiserver}
  restartable "$name"
  [ -z "$(our_pids "$name")" ] || die "$name is already running"
  BIN=$(bindir)
  case "$name" in
    etcd) start_etcd ;;
    kube-apiserver) start_apiserver ;;
  esac
  log "$name started again"
}

cmd_down() {
  local t0; t0=$(now_ms)
  # Real nodes first, while the API still answers (their Node objects go too).
  BIN=$(bindir)
  remove_all_real_nodes
  if [ -d "$DIR/pids" ]; then
    # Clients first (all at once), then the apiserver, then etcd: each stops cleanly while what
    # it talks to is still there.
    local pids
    mapfile -t pids < <(our_pids kwok kube-scheduler kube-controller-manager)
    stop_pids "controllers" "${pids[@]}"
    mapfile -t pids < <(our_pids kube-apiserver)
    stop_pids "kube-apiserver" "${pids[@]}"
    mapfile -t pids < <(our_pids etcd)
    stop_pids "etcd" "${pids[@]}"
    mapfile -t pids < <(our_pids "$HOST_NS_HOLDER")
    stop_pids "$HOST_NS_HOLDER" "${pids[@]}"
    rm -f "$DIR"/pids/*
  fi
  if netns_exists "$NETNS"; then
    # Processes the tests started inside the namespace (proxies, publishers) would otherwise
    # outlive it: stop them by pid too.
    local left
    mapfile -t left < <(ip netns pids "$NETNS" 2>/dev/null || true)
    if [ ${#left[@]} -gt 0 ]; then
      log "stopping processes still inside $NETNS: ${left[*]}"
      stop_pids "leftovers" "${left[@]}"
    fi
    ip netns del "$NETNS"
  fi
  log "down in $(( $(now_ms) - t0 )) ms"
}

cmd_up() {
  ensure_packages
  local t_up; t_up=$(now_ms)
  phase_start
  BIN=$("$HACK_DIR/tools.sh" bindir)
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
    [ -x "$BIN/$b" ] || "$HACK_DIR/tools.sh" path "$b" >/dev/null
  done
  [ -d "$BIN/kwok-stages" ] || "$HACK_DIR/tools.sh" path kwok-stages >/dev/null
  phase_end tools

  phase_start
  cmd_down 2>/dev/null || true # a crashed previous run
  rm -rf "$DIR"
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/etcd" "$DIR/nodes"
  ip netns add "$NETNS"
  in_ns ip link set lo up
  start_host_ns_holder
  local r
  for r in "${LOCAL_RANGES[@]}"; do in_ns ip route add local "$r" dev lo; done
  phase_end netns

  phase_start
  make_certs
  phase_end certs

  phase_start
  start_etcd
  phase_end etcd

  phase_start
  start_apiserver
  local p="$DIR/pki"
  phase_end kube-apiserver

  phase_start
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/kubeconfig" --authentication-kubeconfig="$DIR/kubeconfig" \
    --authorization-kubeconfig="$DIR/kubeconfig" \
    --controllers="$KCM_CONTROLLERS" \
    --leader-elect=false --use-service-account-credentials=false \
    --root-ca-file="$p/ca.crt" --service-account-private-key-file="$p/sa.key" \
    --bind-address=127.0.0.1 --kube-api-qps=1000 --kube-api-burst=2000 --v=1
  cat >"$DIR/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $DIR/kubeconfig
  qps: 1000
  burst: 2000
leaderElection:
  leaderElect: false
EOF
  start kube-scheduler "$BIN/kube-scheduler" --config="$DIR/scheduler.yaml" \
    --authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
    --bind-address=127.0.0.1 --v=1
  local s="$BIN/kwok-stages"
  # kwok plays the kubelet of the fake nodes only (add-node annotates them); real nodes have their own.
  start kwok "$BIN/kwok" --kubeconfig="$DIR/kubeconfig" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr="$POD_CIDR" --node-ip="$KWOK_DEFAULT_NODE_IP" \
    -c "$s/node/fast/node-initialize.yaml" -c "$s/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    -c "$s/pod/fast/pod-ready.yaml" -c "$s/pod/fast/pod-complete.yaml" -c "$s/pod/fast/pod-delete.yaml"
  # The default ServiceAccount appears once the controller-manager runs its controllers.
  wait_for "default ServiceAccount" 90 kube-controller-manager kubectl_ns get serviceaccount default -n default
  local c
  for c in kube-scheduler kwok; do alive "$c" || { tail -n 30 "$DIR/logs/$c.log" >&2; die "$c exited"; }; done
  phase_end controllers
  log "up in $(( $(now_ms) - t_up )) ms; apiserver https://$APISERVER_IP:$APISERVER_PORT in netns $NETNS; state in $DIR"
}

cmd_env() {
  local b; b=$(bindir)
  cat <<EOF
export FANOUT_NETNS=$NETNS
export FANOUT_CLUSTER_DIR=$DIR
export KUBECONFIG=$DIR/kubeconfig
export PATH=$b:\$PATH
export FANOUT_APISERVER=https://$APISERVER_IP:$APISERVER_PORT
export FANOUT_TEST_RANGE=$TEST_RANGE
export FANOUT_POD_CIDR=$POD_CIDR
export FANOUT_SERVICE_CIDR=$SERVICE_CIDR
EOF
}

cmd_exec() {
  [ $# -ge 1 ] || die "usage: $0 exec CMD..."
  local b; b=$(bindir)
  ip netns exec "$NETNS" env KUBECONFIG="$DIR/kubeconfig" PATH="$b:$PATH" \
    FANOUT_NETNS="$NETNS" FANOUT_CLUSTER_DIR="$DIR" "$@"
}

# Next free node address, 10.200.1.1 .. 10.200.63.250, recorded under $DIR/nodes.
allocate_node_ip() {
  exec 8>"$DIR/nodes/.lock"
  flock 8
  local n; n=$(cat "$DIR/nodes/.next" 2>/dev/null || echo 0)
  echo $((n + 1)) >"$DIR/nodes/.next"
  flock -u 8
  [ "$n" -lt $((63 * 250)) ] || die "node address range exhausted"
  echo "10.200.$((1 + n / 250)).$((1 + n % 250))"
}

cmd_add_node() {
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then die "usage: $0 add-node NAME [IP]"; fi
  local name=$1 ip=${2:-}
  BIN=$(bindir)
  [ -n "$ip" ] || ip=$(allocate_node_ip)
  # status is accepted on create for nodes; kwok's node-initialize stage keeps InternalIP and
  # Hostname when both are present and fills in the conditions.
  kubectl_ns apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
spec: {}
status:
  addresses:
  - type: InternalIP
    address: $ip
  - type: Hostname
    address: $name
  allocatable: {cpu: "32", memory: 256Gi, pods: "1100"}
  capacity: {cpu: "32", memory: 256Gi, pods: "1100"}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
EOF
  # Older servers drop status on create: make sure the address is there.
  local got
  got=$(kubectl_ns get node "$name" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  if [ "$got" != "$ip" ]; then
    kubectl_ns patch node "$name" --subresource=status --type=merge \
      -p "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$ip\"},{\"type\":\"Hostname\",\"address\":\"$name\"}]}}" >/dev/null
  fi
  echo "$ip" >"$DIR/nodes/$name"
  echo "$name $ip"
}

cmd_remove_node() {
  [ $# -eq 1 ] || die "usage: $0 remove-node NAME"
  local name=$1
  BIN=$(bindir)
  # A node that vanishes takes its pods with it: delete the node (the DaemonSet controller then
  # stops wanting a pod there), then remove its pods at once as a dead kubelet would leave them
  # to the pod garbage collector (which waits ~40 s).
  kubectl_ns delete node "$name" --ignore-not-found --wait=false >/dev/null
  kubectl_ns delete pods --all-namespaces --field-selector "spec.nodeName=$name" \
    --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  rm -f "$DIR/nodes/$name"
  echo "$name removed"
}

# A kubeconfig that authenticates as a ServiceAccount with a TokenRequest token (what a pod of
# that ServiceAccount would get), for running a controller locally with exactly its RBAC.
# write_kubeconfig FILE USER NAMESPACE CREDENTIALS: a kubeconfig (mode 0600) for the test
# apiserver; CREDENTIALS are the user's fields, indented four spaces (client cert or token).
write_kubeconfig() {
  local f=$1 user=$2 ns=$3 credentials=$4
  (umask 077 && cat >"$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fanout-test
  cluster:
    server: https://$APISERVER_IP:$APISERVER_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $user
  user:
$credentials
contexts:
- name: $user
  context:
    cluster: fanout-test
    user: $user
    namespace: $ns
current-context: $user
EOF
  )
}

cmd_sa_kubeconfig() {
  if [ $# -lt 2 ] || [ $# -gt 3 ]; then die "usage: $0 sa-kubeconfig NAMESPACE SERVICEACCOUNT [DURATION]"; fi
  local ns=$1 sa=$2 duration=${3:-2h}
  BIN=$(bindir)
  local token
  token=$(kubectl_ns create token -n "$ns" "$sa" --duration="$duration") || die "TokenRequest for $ns/$sa failed"
  local f="$DIR/sa-$ns-$sa.kubeconfig"
  write_kubeconfig "$f" "$ns-$sa" "$ns" "    token: $token"
  echo "$f"
}

cmd_status() {
  local name pid
  for name in "${COMPONENTS[@]}"; do
    pid=$(cat "$DIR/pids/$name" 2>/dev/null || echo -)
    if [ "$pid" != - ] && kill -0 "$pid" 2>/dev/null; then echo "$name running pid $pid"; else echo "$name not running"; fi
  done
  if netns_exists "$NETNS"; then
    echo "netns $NETNS present"
    api_ready >/dev/null 2>&1 && echo "apiserver ready" || echo "apiserver not ready"
  else
    echo "netns $NETNS absent"
  fi
  local node comp
  for node in $(real_node_names); do
    for comp in containerd kubelet kube-proxy; do
      pid=$(our_node_pids "$node" "$comp")
      if [ -n "$pid" ]; then echo "real node $node: $comp running pid $pid"; else echo "real node $node: $comp not running"; fi
    done
  done
}

# shellcheck source=hack/real-node.sh
. "$HACK_DIR/real-node.sh"

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  exec) shift; cmd_exec "$@" ;;
  add-node) shift; cmd_add_node "$@" ;;
  remove-node) shift; cmd_remove_node "$@" ;;
  add-real-node) run_on_host "$@"; shift; cmd_add_real_node "$@" ;;
  remove-real-node) run_on_host "$@"; shift; cmd_remove_real_node "$@" ;;
  node-exec) run_on_host "$@"; shift; cmd_node_exec "$@" ;;
  sa-kubeconfig) shift; cmd_sa_kubeconfig "$@" ;;
  stop) shift; cmd_stop_component "$@" ;;
  start) shift; cmd_start_component "$@" ;;
  status) cmd_status ;;
  *) echo "usage: $0 up | down | env | exec CMD... | add-node NAME [IP] | remove-node NAME | add-real-node NAME | remove-real-node NAME | node-exec NAME CMD... | sa-kubeconfig NS SA [DURATION] | status" >&2; exit 2 ;;
esac
