# shellcheck shell=bash
# shellcheck disable=SC2153  # STATE, BIN_DIR, ... come from testenv
# The node rbee-node-0: containerd + runc, the CNI bridge plugin, a locally built pause
# image, kubelet, kube-proxy and CoreDNS (cluster DNS), all on the node's own address.
# Sourced by tests/testenv/testenv after lib/node-host.sh.

NODE_COMPONENTS=(containerd kubelet kube-proxy coredns)
CLUSTER_DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
PAUSE_VERSION=3.10.1
PAUSE_IMAGE=localhost/rbee-pause:$PAUSE_VERSION
TOOLBOX_IMAGE=localhost/rbee-toolbox:dev
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_HEALTHZ_PORT=10256
KUBE_PROXY_METRICS_PORT=10249
COREDNS_READY_PORT=8181

node_dir() { printf '%s\n' "$STATE/node"; }
containerd_socket() { printf '%s\n' "$STATE/node/containerd/containerd.sock"; }
node_ctr() { ctr --address "$(containerd_socket)" --namespace k8s.io "$@"; }

# node_unavailable_reason: why this testenv has no node, or nothing when it has one.
node_unavailable_reason() {
  cat "$STATE/node-unavailable" 2>/dev/null || true
}

node_enabled() { [[ ! -f "$STATE/node-unavailable" ]]; }

# decide_node: run by `up` on a new state directory: the node runs unless RBEE_TESTENV_NODE=0
# or the host cannot run containers; then `up` says why and records it for the tests.
decide_node() {
  local reasons
  if [[ "${RBEE_TESTENV_NODE:-1}" == 0 ]]; then
    reasons="testenv was started with RBEE_TESTENV_NODE=0, so it has no node $NODE_NAME"
  else
    reasons="$(node_blockers)"
  fi
  if [[ -z "$reasons" ]]; then
    rm -f "$STATE/node-unavailable"
    return
  fi
  printf '%s\n' "$reasons" >"$STATE/node-unavailable"
  step "no node $NODE_NAME on this host; tests that need it will fail with:"
  sed 's/^/    /' "$STATE/node-unavailable" >&2
}

write_node_configs() {
  local dir pki="$STATE/$PKI_DIR_NAME"
  dir="$(node_dir)"
  mkdir -p "$dir"/{cni/net.d,cni/ipam,kubelet,pod-logs,containerd}
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$(containerd_socket)"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This host's root may not lower oom_score_adj (no CAP_SYS_RESOURCE), as the kubelet asks
  # for the sandbox: clamp it to what is allowed.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "$NODE_IP"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$dir/cni/net.d"
EOF
  cat >"$dir/cni/net.d/10-rbee.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "rbee",
  "plugins": [{
    "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
             "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
             "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: $NODE_IP
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$(containerd_socket)
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
podLogsDir: $dir/pod-logs
# Local images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
EOF
}

# ensure_node_images: builds the pause and toolbox images into the cache once per versions
# key (buildah, from the Containerfiles in images/).
ensure_node_images() {
  local out="$NODE_IMAGES_DIR"
  [[ -f "$out/pause.oci.tar" && -f "$out/toolbox.oci.tar" ]] && return 0
  mkdir -p "$out"
  local ctx
  ctx="$(mktemp -d)"
  if [[ ! -f "$out/pause.oci.tar" ]]; then
    local src
    src="$(cd "$MODULES_DIR/kubernetes" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    [[ -f "$src" ]] || die "cannot find $src"
    step "building the pause image $PAUSE_IMAGE (gcc -static of k8s.io/kubernetes' pause.c, buildah)"
    mkdir -p "$ctx/pause"
    gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$ctx/pause/pause" "$src" \
      || die "compiling $src failed"
    strip "$ctx/pause/pause"
    build_oci_archive "$TESTENV_DIR/images/pause/Containerfile" "$ctx/pause" "$PAUSE_IMAGE" "$out/pause.oci.tar"
  fi
  if [[ ! -f "$out/toolbox.oci.tar" ]]; then
    step "building the toolbox image $TOOLBOX_IMAGE (Debian's busybox-static, buildah)"
    local root="$ctx/toolbox/rootfs" applet lib
    mkdir -p "$root/bin" "$root/etc" "$root/lib64" "$root/lib/x86_64-linux-gnu"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
      [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    # A static glibc program still loads libc's NSS modules to resolve names (wget).
    for lib in ld-linux-x86-64.so.2 libc.so.6 libnss_dns.so.2 libnss_files.so.2 libresolv.so.2; do
      cp -L "/lib/x86_64-linux-gnu/$lib" "$root/lib/x86_64-linux-gnu/$lib"
    done
    ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
    printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
    build_oci_archive "$TESTENV_DIR/images/toolbox/Containerfile" "$ctx/toolbox" "$TOOLBOX_IMAGE" "$out/toolbox.oci.tar"
  fi
  rm -rf "$ctx"
}

# build_oci_archive CONTAINERFILE CONTEXT IMAGE OUT: buildah bud, then an OCI archive.
build_oci_archive() {
  local tmp="$4.tmp.$$" before
  before="$(buildah images --quiet --no-trunc "$3" 2>/dev/null || true)"
  buildah bud --quiet --pull=never -f "$1" -t "$3" "$2" >/dev/null || die "buildah bud of $1 failed"
  [[ -z "$before" || "$before" == "$(buildah images --quiet --no-trunc "$3")" ]] \
    || buildah rmi "$before" >/dev/null 2>&1 || true
  rm -f "$tmp"
  buildah push --quiet "$3" "oci-archive:$tmp:$3" || die "buildah push of $3 failed"
  mv -f "$tmp" "$4"
}

# load_images FILE...: imports OCI archives into the node's containerd (namespace k8s.io).
load_images() {
  local file
  for file in "$@"; do
    [[ -f "$file" ]] || die "no such image archive: $file"
    node_ctr images import "$file" >/dev/null || die "ctr images import $file failed (log: $STATE/logs/containerd.log)"
    step "loaded $file into $NODE_NAME's containerd"
  done
}

write_corefile() {
  cat >"$(node_dir)/Corefile" <<EOF2
.:53 {
    bind $NODE_IP
    errors
    ready $NODE_IP:$COREDNS_READY_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig rbee-testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    forward . /etc/resolv.conf
    cache 5
    loadbalance
}
EOF2
}

# node_component_argv NAME: sets ARGV for the node's components.
node_component_argv() {
  local dir
  dir="$(node_dir)"
  case "$1" in
    containerd) ARGV=(containerd --config "$dir/containerd.toml" --log-level warn) ;;
    kubelet) ARGV=("$BIN_DIR/kubelet"
      --config="$dir/kubelet.yaml"
      --kubeconfig="$STATE/node-$NODE_NAME.kubeconfig"
      --hostname-override="$NODE_NAME"
      --node-ip="$NODE_IP"
      --root-dir="$dir/kubelet"
      --v=1) ;;
    kube-proxy) ARGV=("$BIN_DIR/kube-proxy"
      --kubeconfig="$STATE/kube-proxy.kubeconfig"
      --hostname-override="$NODE_NAME"
      --bind-address="$NODE_IP"
      --cluster-cidr="$POD_CIDR"
      --proxy-mode=iptables
      --healthz-bind-address="$NODE_IP:$KUBE_PROXY_HEALTHZ_PORT"
      --metrics-bind-address="$NODE_IP:$KUBE_PROXY_METRICS_PORT"
      --nodeport-addresses="$NODE_IP/32"
      # 0: leave the host's conntrack table size and timeouts as they are.
      --conntrack-max-per-core=0
      --conntrack-tcp-timeout-established=0s
      --conntrack-tcp-timeout-close-wait=0s
      --iptables-min-sync-period=1s) ;;
    coredns) ARGV=("$BIN_DIR/coredns" -conf "$dir/Corefile") ;;
    *) return 1 ;;
  esac
}

# wait_http NAME URL: waits until URL answers 200 (plain HTTP on the node's address).
wait_http() {
  local deadline=$((SECONDS + 90))
  until python3 - "$2" <<'PY' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PY
  do
    process_alive "$1" || fail_start "$1" "exited while starting"
    (( SECONDS < deadline )) || fail_start "$1" "did not answer $2 within 90s"
    sleep 0.5
  done
}

wait_containerd() {
  local deadline=$((SECONDS + 60))
  until node_ctr version >/dev/null 2>&1; do
    process_alive containerd || fail_start containerd "exited while starting"
    (( SECONDS < deadline )) || fail_start containerd "did not answer on $(containerd_socket) within 60s"
    sleep 0.2
  done
}

# start_node: containerd, images, kubelet, kube-proxy, cluster DNS (the network is up
# before the API server starts on the node's address).
start_node() {
  node_enabled || return 0
  write_node_configs
  write_corefile
  start_component containerd
  wait_containerd
  local name archive
  for name in pause toolbox; do
    archive="$NODE_IMAGES_DIR/$name.oci.tar"
    [[ -n "$(node_ctr images ls -q "name==$(image_of "$name")" 2>/dev/null)" ]] || load_images "$archive"
  done
  # What tests/images/build made before, so a down and up keeps the images tests run.
  for archive in "$REPO_ROOT"/target/images/*.oci.tar; do
    [[ -f "$archive" ]] && load_images "$archive"
  done
  apply_node_manifests
  start_component kubelet
  start_component kube-proxy
  start_component coredns
  wait_http kubelet "http://$NODE_IP:$KUBELET_HEALTHZ_PORT/healthz"
  wait_http kube-proxy "http://$NODE_IP:$KUBE_PROXY_HEALTHZ_PORT/livez"
  wait_http coredns "http://$NODE_IP:$COREDNS_READY_PORT/ready"
}

image_of() {
  case "$1" in pause) echo "$PAUSE_IMAGE" ;; toolbox) echo "$TOOLBOX_IMAGE" ;; esac
}

# apply_node_manifests: RBAC for CoreDNS and for the API server's calls to the kubelet, and
# the kube-dns Service, whose one endpoint is CoreDNS on the node's address.
apply_node_manifests() {
  sed -e "s/@NODE_IP@/$NODE_IP/g" -e "s/@CLUSTER_DNS_IP@/$CLUSTER_DNS_IP/g" \
    "$TESTENV_DIR/manifests/node.yaml" | kc apply --server-side --force-conflicts -f - >/dev/null \
    || die "applying manifests/node.yaml failed (see above)"
}

# stop_node: kills the pods' processes, stops the node's components, and removes what
# they leave outside the state directory (mounts, cgroups, iptables chains, the bridge).
stop_node() {
  local dir
  dir="$(node_dir)"
  [[ -d "$dir" ]] || return 0
  stop_components kubelet kube-proxy coredns
  kill_node_pods
  stop_components containerd
  unmount_under "$dir"
  if [[ -x "$BIN_DIR/kube-proxy" ]]; then
    "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || step "kube-proxy --cleanup failed"
  fi
  remove_node_network
  [[ "$(cat "$NODE_OWNER_FILE" 2>/dev/null)" == "$STATE" ]] && rm -f "$NODE_OWNER_FILE"
  return 0
}
