# shellcheck shell=bash
# shellcheck disable=SC2153,SC2054  # STATE comes from testenv; commas are inside flag values
# Starting, checking and stopping the control-plane processes. Sourced by tests/testenv/testenv.
# Every process listens on 127.0.0.1 only, and has "$STATE/" in its command line: that is how
# a pid file's pid is recognised as ours before it is reported or killed.

# component_argv NAME: sets ARGV to NAME's command line.
component_argv() {
  local pki="$STATE/$PKI_DIR_NAME"
  case "$1" in
    etcd) ARGV=("$BIN_DIR/etcd"
      --name=rbee-testenv
      --data-dir="$STATE/etcd"
      --listen-client-urls="http://127.0.0.1:$ETCD_PORT"
      --advertise-client-urls="http://127.0.0.1:$ETCD_PORT"
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
      --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
      --initial-cluster="rbee-testenv=http://127.0.0.1:$ETCD_PEER_PORT"
      # Throwaway data: skip fsync, it makes every write several times faster.
      --unsafe-no-fsync
      --log-level=warn) ;;
    kube-apiserver) ARGV=("$BIN_DIR/kube-apiserver"
      --etcd-servers="http://127.0.0.1:$ETCD_PORT"
      --bind-address="$API_HOST"
      --advertise-address="$API_HOST"
      --secure-port="$API_PORT"
      --tls-cert-file="$pki/kube-apiserver.crt"
      --tls-private-key-file="$pki/kube-apiserver.key"
      --client-ca-file="$pki/ca.crt"
      --service-cluster-ip-range="$SERVICE_CIDR"
      --service-account-issuer="$SA_ISSUER"
      --service-account-key-file="$pki/sa.pub"
      --service-account-signing-key-file="$pki/sa.key"
      --api-audiences="$SA_ISSUER,rbee-operator"
      --authorization-mode=Node,RBAC
      --requestheader-client-ca-file="$pki/front-proxy-ca.crt"
      --requestheader-allowed-names=front-proxy-client
      --requestheader-username-headers=X-Remote-User
      --requestheader-group-headers=X-Remote-Group
      --requestheader-extra-headers-prefix=X-Remote-Extra-
      --proxy-client-cert-file="$pki/front-proxy-client.crt"
      --proxy-client-key-file="$pki/front-proxy-client.key"
      --allow-privileged=true
      --kubelet-client-certificate="$pki/kube-apiserver-kubelet-client.crt"
      --kubelet-client-key="$pki/kube-apiserver-kubelet-client.key"
      --kubelet-preferred-address-types=InternalIP
      --audit-policy-file="$TESTENV_DIR/audit-policy.yaml"
      --audit-log-path="$STATE/logs/audit.log"
      --audit-log-maxsize=200
      --audit-log-maxbackup=1
      --profiling=false)
      # Without a node nothing in a pod reaches the API server, and 127.0.0.1 is not a valid
      # address for the `kubernetes` Service's endpoints.
      [[ "$API_HOST" != 127.0.0.1 ]] || ARGV+=(--endpoint-reconciler-type=none) ;;
    kube-controller-manager) ARGV=("$BIN_DIR/kube-controller-manager"
      --kubeconfig="$STATE/kube-controller-manager.kubeconfig"
      --authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig"
      --authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig"
      --bind-address=127.0.0.1
      --secure-port="$KCM_PORT"
      --cert-dir="$STATE/kube-controller-manager"
      --service-account-private-key-file="$pki/sa.key"
      --root-ca-file="$pki/ca.crt"
      --use-service-account-credentials=true
      --cluster-signing-cert-file="$pki/ca.crt"
      --cluster-signing-key-file="$pki/ca.key"
      --cluster-name=rbee-testenv
      # All default controllers: garbage collector, namespace, serviceaccount(-token),
      # endpointslice, replicaset, deployment, node-lifecycle (kept: it removes the
      # not-ready taint from new nodes; rbee-local-0 gets a Lease heartbeat instead).
      --controllers='*'
      --leader-elect=false
      --profiling=false) ;;
    kube-scheduler) ARGV=("$BIN_DIR/kube-scheduler"
      --kubeconfig="$STATE/kube-scheduler.kubeconfig"
      --authentication-kubeconfig="$STATE/kube-scheduler.kubeconfig"
      --authorization-kubeconfig="$STATE/kube-scheduler.kubeconfig"
      --bind-address=127.0.0.1
      --secure-port="$SCHEDULER_PORT"
      --cert-dir="$STATE/kube-scheduler"
      --leader-elect=false
      --profiling=false) ;;
    kwok) local stages
      stages="$(printf '%s,' "$TESTENV_DIR"/kwok/*.yaml)"
      # HOME is moved so a user's ~/.kwok/kwok.yaml is not merged into our configuration.
      ARGV=(env "HOME=$STATE/kwok" "$BIN_DIR/kwok"
      --kubeconfig="$STATE/kwok.kubeconfig"
      --config="${stages%,}"
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
      --node-lease-duration-seconds=40
      --cidr=10.244.0.0/16) ;;
    local-node-heartbeat) ARGV=(bash "$TESTENV_DIR/testenv" _local-node-heartbeat "$STATE/" "$BIN_DIR") ;;
    *) node_component_argv "$1" || die "unknown component $1" ;;
  esac
}

# component_ports NAME: the ports NAME listens on (none for kwok and the heartbeat).
component_ports() {
  case "$1" in
    etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
    kube-apiserver) echo "$API_PORT" ;;
    kube-controller-manager) echo "$KCM_PORT" ;;
    kube-scheduler) echo "$SCHEDULER_PORT" ;;
    *) echo "" ;;
  esac
}

component_listen() {
  local ports p out="" host=127.0.0.1
  ports="$(component_ports "$1")"
  case "$1" in
    kube-apiserver) host="$API_HOST" ;;
    kubelet) ports="$KUBELET_PORT $KUBELET_HEALTHZ_PORT"; host="$NODE_IP" ;;
    kube-proxy) ports="$KUBE_PROXY_HEALTHZ_PORT $KUBE_PROXY_METRICS_PORT"; host="$NODE_IP" ;;
    coredns) ports="53 $COREDNS_READY_PORT"; host="$NODE_IP" ;;
  esac
  for p in $ports; do out+="$host:$p "; done
  printf '%s\n' "${out:--}"
}

# component_pid NAME: prints NAME's pid when it runs and is ours.
component_pid() {
  local file="$STATE/pids/$1.pid" pid
  [[ -f "$file" ]] || return 1
  pid="$(<"$file")"
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE/" || return 1
  printf '%s\n' "$pid"
}

# process_alive NAME: NAME's pid file names a live process. For a process `up` has just
# started: until setsid execs, its command line is still this script's.
process_alive() {
  local file="$STATE/pids/$1.pid" stat
  [[ -f "$file" ]] || return 1
  stat="$(cat "/proc/$(<"$file")/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

all_running() {
  local name
  for name in "${COMPONENTS[@]}"; do
    component_pid "$name" >/dev/null || return 1
  done
}

# port_owners PORT...: prints "PORT PID" for each PORT something listens on (PID "?" when
# the owner cannot be seen); nothing for free ports.
port_owners() {
  python3 - "$@" <<'PY'
import os, sys
wanted = {int(p) for p in sys.argv[1:]}
owners = {}
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        f = row.split()
        port = int(f[1].rsplit(":", 1)[1], 16)
        if f[3] == "0A" and port in wanted:
            owners["socket:[%s]" % f[9]] = port
found = {port: "?" for port in owners.values()}
if owners:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
                if link in owners:
                    found[owners[link]] = pid
        except OSError:
            pass
for port, pid in sorted(found.items()):
    print(port, pid)
PY
}

# port_env PORT: the variable that sets PORT.
port_env() {
  case "$1" in
    "$API_PORT") echo RBEE_TESTENV_PORT ;;
    "$ETCD_PORT") echo RBEE_TESTENV_ETCD_PORT ;;
    "$ETCD_PEER_PORT") echo RBEE_TESTENV_ETCD_PEER_PORT ;;
    "$KCM_PORT") echo RBEE_TESTENV_KCM_PORT ;;
    *) echo RBEE_TESTENV_SCHEDULER_PORT ;;
  esac
}

check_ports_free() {
  local name ports=() port owner
  for name in "${COMPONENTS[@]}"; do
    component_pid "$name" >/dev/null && continue
    # shellcheck disable=SC2207
    ports+=($(component_ports "$name"))
  done
  (( ${#ports[@]} > 0 )) || return 0
  read -r port owner < <(port_owners "${ports[@]}") || return 0
  local what="pid $owner"
  [[ "$owner" != "?" && -r "/proc/$owner/comm" ]] && what="pid $owner ($(<"/proc/$owner/comm"))"
  die "port $port is in use by $what: run testenv down or set $(port_env "$port")"
}

start_component() {
  local name="$1" log="$STATE/logs/$1.log"
  component_pid "$name" >/dev/null && return 0
  component_argv "$name"
  step "starting $name (log: $log)"
  install -d -m 700 "$STATE/$name"
  # setsid: detached from the caller's terminal and process group, so it outlives `up`;
  # fd 9 (the state lock held by `up`) is closed, or the daemon would hold the lock forever.
  setsid "${ARGV[@]}" >>"$log" 2>&1 </dev/null 9>&- &
  echo "$!" >"$STATE/pids/$name.pid"
}

# fail_start NAME WHAT: reports a component that did not come up, with its log's tail.
fail_start() {
  local log="$STATE/logs/$1.log"
  echo "---- last lines of $log ----" >&2
  tail -n 25 "$log" >&2 || true
  die "$1 $2 (log: $log): fix the cause, then run testenv down && testenv up"
}

# wait_port NAME PORT: waits until NAME accepts connections on PORT.
wait_port() {
  local deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    process_alive "$1" || fail_start "$1" "exited while starting"
    (( SECONDS < deadline )) || fail_start "$1" "did not listen on 127.0.0.1:$2 within 60s"
    sleep 0.2
  done
}

wait_api_ready() {
  local deadline=$((SECONDS + 90))
  until api_ready; do
    process_alive kube-apiserver || fail_start kube-apiserver "exited while starting"
    (( SECONDS < deadline )) || fail_start kube-apiserver "was not ready (/readyz) within 90s"
    sleep 0.5
  done
  step "kube-apiserver is ready on https://$API_HOST:$API_PORT"
}

start_all() {
  start_component etcd
  wait_port etcd "$ETCD_PORT"
  start_component kube-apiserver
  wait_api_ready
  start_component kube-controller-manager
  start_component kube-scheduler
  start_component kwok
  start_component local-node-heartbeat
  wait_port kube-controller-manager "$KCM_PORT"
  wait_port kube-scheduler "$SCHEDULER_PORT"
  start_node
}

stop_all() {
  stop_node
  stop_components "${COMPONENTS[@]}"
}

# stop_components NAME...: in reverse start order, one after the other (the API server
# leaves etcd its last words), SIGTERM, SIGKILL after 15s.
stop_components() {
  local i name pid deadline
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name="${COMPONENTS[i]}"
    [[ " $* " == *" $name "* ]] || continue
    pid="$(component_pid "$name")" || continue
    step "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while [[ -e "/proc/$pid" ]] && (( SECONDS < deadline )); do sleep 0.1; done
    if [[ -e "/proc/$pid" ]]; then
      step "$name (pid $pid) did not stop within 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# local_node_heartbeat STATE/ BIN_DIR: renews rbee-local-0's Lease every 10s as
# system:node:rbee-local-0, like a kubelet, until the state directory is removed.
local_node_heartbeat() {
  local state="${1%/}" bin="$2"
  local kubeconfig="$state/node-rbee-local-0.kubeconfig" now
  while [[ -f "$kubeconfig" ]]; do
    now="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
    if ! "$bin/kubectl" --kubeconfig="$kubeconfig" --request-timeout=5s -n kube-node-lease \
        patch lease rbee-local-0 --type=merge -p "{\"spec\":{\"renewTime\":\"$now\"}}" >/dev/null 2>&1; then
      "$bin/kubectl" --kubeconfig="$kubeconfig" --request-timeout=5s create -f - <<EOF || echo "$(date -u +%FT%TZ) lease renewal failed; retrying in 10s"
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: rbee-local-0
  namespace: kube-node-lease
spec:
  holderIdentity: rbee-local-0
  leaseDurationSeconds: 40
  renewTime: "$now"
EOF
    fi
    sleep 10
  done
}
