#!/usr/bin/env bash
# Proof that the local control plane works: up; a DaemonSet (hostPath volume, tolerate everything)
# on 3 fake nodes gives 3 Running+Ready pods with addresses from the test range; removing a node
# removes its pod; an EndpointSlice with a pod address is accepted; helm and kubectl report real
# versions; down leaves no process and no namespace. Exits non-zero on the first failure.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HACK_DIR/cluster.sh"
NETNS="${FANOUT_NETNS:-fanout-test}"
DIR="${FANOUT_CLUSTER_DIR:-/tmp/fanout-cluster}"
NS=fanout-smoke

say() { printf '[smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
k() { "$CLUSTER" exec kubectl "$@"; }

# wait_until TIMEOUT_S DESCRIPTION CMD...: poll until CMD succeeds.
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${timeout}s: $what"
    sleep 0.5
  done
}

cleanup() {
  local rc=$?
  "$CLUSTER" down || true
  exit $rc
}
trap cleanup EXIT

t0=$(date +%s%3N)
"$CLUSTER" up
say "up took $(( $(date +%s%3N) - t0 )) ms"

say "nothing the cluster started listens outside the namespace"
pids=$(cat "$DIR"/pids/* | paste -sd'|')
if ss -ltnpH | grep -E "pid=($pids)," ; then fail "a component listens in the host namespace"; fi
"$CLUSTER" exec ss -ltnH | awk '{print $4}' | sort | tr '\n' ' '; echo

say "versions"
server_version=$(k version -o json | sed -n 's/.*"gitVersion": "\(v1\.[0-9]*\.[0-9]*\)".*/\1/p' | sort -u | tr '\n' ' ')
k version
echo "$server_version" | grep -q 'v1\.' || fail "kubectl version shows no real version: $server_version"
k version -o json | grep -q 'v0.0.0' && fail "a component reports v0.0.0"
helm_version=$("$CLUSTER" exec helm version --short)
echo "helm $helm_version"
case "$helm_version" in v3.*) ;; *) fail "helm version is '$helm_version'" ;; esac
# helm asks the server for its version too (kubeVersion checks); it must be a real one.
"$CLUSTER" exec sh -c 'helm list -A >/dev/null' || fail "helm cannot talk to the API"

say "3 fake nodes"
for n in smoke-a smoke-b smoke-c; do "$CLUSTER" add-node "$n"; done
k get nodes -o wide

say "DaemonSet with a hostPath volume, tolerating every taint"
k create namespace "$NS" >/dev/null
k apply -n "$NS" -f - <<'EOF'
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: smoke
spec:
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      tolerations: [{operator: Exists}]
      containers:
      - name: main
        image: example.invalid/smoke:1
        volumeMounts:
        - {name: run, mountPath: /run/smoke}
      volumes:
      - name: run
        hostPath: {path: /run/smoke, type: DirectoryOrCreate}
EOF

ready_pods() {
  k get pods -n "$NS" -l app=smoke -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.status.podIP} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}'
}
count_ready() { ready_pods | awk '$3=="Running" && $5=="True"' | wc -l; }
t1=$(date +%s%3N)
wait_until 60 "3 Running+Ready DaemonSet pods" test "$(count_ready)" -eq 3
say "3 pods Running+Ready after $(( $(date +%s%3N) - t1 )) ms"
ready_pods
ready_pods | awk '{print $4}' | while read -r ip; do
  case "$ip" in 10.200.*) ;; *) fail "pod IP '$ip' is not in 10.200.0.0/16" ;; esac
done
hostips=$(k get pods -n "$NS" -l app=smoke -o jsonpath='{.items[*].status.hostIP}')
say "pod hostIPs: $hostips"
for ip in $hostips; do case "$ip" in 10.200.1.*) ;; *) fail "hostIP '$ip' is not a node InternalIP" ;; esac; done

say "EndpointSlice with a pod address is accepted"
pod_ip=$(ready_pods | awk 'NR==1{print $4}')
k apply -n "$NS" -f - <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: smoke-1
  labels: {kubernetes.io/service-name: smoke}
addressType: IPv4
ports: [{name: pub, port: 5555, protocol: TCP}]
endpoints:
- addresses: ["$pod_ip"]
  conditions: {ready: true}
EOF
k get endpointslice -n "$NS" smoke-1 -o jsonpath='{.endpoints[0].addresses[0]}' | grep -qx "$pod_ip" \
  || fail "EndpointSlice not stored with $pod_ip"

say "the pod address answers inside the namespace (routed to lo there)"
"$CLUSTER" exec sh -c "ip route get $pod_ip | grep -q ' dev lo '" || fail "$pod_ip is not local in the namespace"

say "remove node smoke-b: its pod goes"
t2=$(date +%s%3N)
"$CLUSTER" remove-node smoke-b
pods_on_b() { k get pods -n "$NS" --field-selector spec.nodeName=smoke-b -o name | wc -l; }
wait_until 60 "pod on smoke-b gone" test "$(pods_on_b)" -eq 0
wait_until 30 "2 pods left" test "$(count_ready)" -eq 2
say "pod gone $(( $(date +%s%3N) - t2 )) ms after remove-node"
ready_pods

say "TokenRequest works for a ServiceAccount"
k create serviceaccount -n "$NS" smoke >/dev/null
token=$(k create token -n "$NS" smoke --duration=10m)
[ -n "$token" ] || fail "no token"
who=$("$CLUSTER" exec kubectl --token="$token" --server="https://10.200.0.1:6443" \
  --certificate-authority="$DIR/pki/ca.crt" --kubeconfig=/dev/null auth whoami -o jsonpath='{.status.userInfo.username}')
echo "token authenticates as $who"
[ "$who" = "system:serviceaccount:$NS:smoke" ] || fail "token authenticates as '$who'"

sakc=$("$CLUSTER" sa-kubeconfig "$NS" smoke)
"$CLUSTER" exec kubectl --kubeconfig "$sakc" get pods >/dev/null 2>&1 \
  && fail "ServiceAccount without RBAC could list pods"
sa_user=$("$CLUSTER" exec kubectl --kubeconfig "$sakc" auth whoami -o jsonpath='{.status.userInfo.username}')
[ "$sa_user" = "system:serviceaccount:$NS:smoke" ] || fail "sa-kubeconfig authenticates as '$sa_user'"
echo "sa-kubeconfig $sakc: authenticated as the ServiceAccount, RBAC applies"

say "a selector-less Service gets a cluster IP from the service range"
k apply -n "$NS" -f - <<'EOF2'
apiVersion: v1
kind: Service
metadata: {name: smoke}
spec:
  ports: [{name: pub, port: 5555, protocol: TCP}]
EOF2
cip=$(k get service -n "$NS" smoke -o jsonpath='{.spec.clusterIP}')
echo "cluster IP $cip"
case "$cip" in 10.200.9[6-9].*|10.200.10[0-9].*|10.200.11[01].*) ;; *) fail "cluster IP '$cip' outside 10.200.96.0/20" ;; esac

say "helm install --wait of a generated chart (Deployment, Service, ServiceAccount)"
chart_dir=$(mktemp -d)
"$CLUSTER" exec helm create "$chart_dir/smokechart" >/dev/null
t4=$(date +%s%3N)
"$CLUSTER" exec helm install smokechart "$chart_dir/smokechart" -n "$NS" --wait --timeout 90s >/dev/null
say "helm install --wait took $(( $(date +%s%3N) - t4 )) ms"
k get deploy -n "$NS" smokechart
"$CLUSTER" exec helm uninstall smokechart -n "$NS" --wait --timeout 60s >/dev/null
rm -rf "$chart_dir"

say "deleting the namespace finishes (namespace controller)"
k delete namespace "$NS" --timeout=60s >/dev/null

say "down"
trap - EXIT
t3=$(date +%s%3N)
"$CLUSTER" down
say "down took $(( $(date +%s%3N) - t3 )) ms"
ip netns list | awk "{print \$1}" | grep -qxF "$NETNS" && fail "netns $NETNS still exists"
for f in "$DIR"/pids/*; do
  [ -e "$f" ] || continue
  fail "pid file left: $f"
done
if pgrep -f "$DIR/" >/dev/null; then fail "a process using $DIR still runs: $(pgrep -af "$DIR/")"; fi
say "PASS"
