# shellcheck shell=bash
# shellcheck disable=SC2153  # STATE comes from testenv
# What the node rbee-node-0 needs from the host: root, cgroups, overlayfs, a bridge, Debian
# packages (installed here, idempotently), the node's network, and the cleanup of what pods
# leave behind (mounts, cgroups). Sourced by tests/testenv/testenv.

NODE_NAME=rbee-node-0
# The bridge the pods' veths join; it also carries the node's own address. Both exist only
# on this machine.
NODE_BRIDGE="${RBEE_TESTENV_NODE_BRIDGE:-rbee0}"
POD_CIDR="${RBEE_TESTENV_POD_CIDR:-10.245.0.0/16}"
NODE_IP="${RBEE_TESTENV_NODE_IP:-10.245.0.1}"
CNI_BIN_DIR=/usr/lib/cni
# One node per machine: kube-proxy's iptables chains and the kubelet's cgroups are global.
NODE_OWNER_FILE=/run/rbee-testenv-node.owner
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah gcc libc6-dev busybox-static)

# node_blockers: prints, one per line, what keeps this host from running the node's
# containers (nothing when it can).
node_blockers() {
  if [[ "$(id -u)" != 0 ]]; then
    echo "testenv runs as uid $(id -u): the node needs root (network namespaces, mounts, cgroups, iptables)"
    return
  fi
  if [[ ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
    local c
    for c in cpu memory pids freezer; do
      [[ -d "/sys/fs/cgroup/$c" ]] || echo "cgroup v1 controller '$c' is not mounted at /sys/fs/cgroup/$c (and cgroup v2 is not the unified hierarchy)"
    done
  fi
  grep -qw overlay /proc/filesystems || echo "the kernel has no overlayfs (containerd's snapshotter needs it): modprobe overlay"
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] \
    || echo "br_netfilter is not loaded (Service traffic between pods on one bridge needs it): modprobe br_netfilter"
  [[ -w /proc/sys/net/ipv4/ip_forward ]] || echo "/proc/sys/net/ipv4/ip_forward is not writable: pods need forwarding"
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    local probe="rbee-probe$$" err
    if err="$(ip link add "$probe" type bridge 2>&1)"; then
      ip link del "$probe" 2>/dev/null || true
    else
      echo "cannot create a bridge interface ($err)"
    fi
  fi
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do package_installed "$p" || missing+=("$p"); done
  if (( ${#missing[@]} > 0 )) && ! command -v apt-get >/dev/null; then
    echo "Debian packages ${missing[*]} are missing and apt-get is not there to install them"
  fi
}

package_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# ensure_node_packages: apt-get installs what NODE_PACKAGES lacks; apt-get update only when
# the first try fails.
ensure_node_packages() {
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do package_installed "$p" || missing+=("$p"); done
  (( ${#missing[@]} > 0 )) || return 0
  step "installing Debian packages for the node: ${missing[*]} (apt-get)"
  local log="$CACHE_ROOT/apt.log"
  mkdir -p "$CACHE_ROOT"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
      || { tail -n 20 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
  fi
  step "installed ${missing[*]}"
}

# claim_node_host: records this state directory as the one whose node runs on this machine;
# dies when another testenv's node is up.
claim_node_host() {
  local owner
  owner="$(cat "$NODE_OWNER_FILE" 2>/dev/null || true)"
  if [[ -n "$owner" && "$owner" != "$STATE" && -d "$owner/node" ]] && pgrep -f -- "--root-dir=$owner/node/kubelet" >/dev/null; then
    die "the node of the testenv in $owner runs on this machine, and there can be one (kube-proxy's iptables rules and the kubelet's cgroups are machine-wide): start this one with RBEE_TESTENV_NODE=0, or take that one down"
  fi
  echo "$STATE" >"$NODE_OWNER_FILE"
}

# ensure_node_network: the bridge with the node's address, forwarding on. The CNI bridge
# plugin adds the pods' veths to it.
ensure_node_network() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    step "creating bridge $NODE_BRIDGE with the node address $NODE_IP (pods: $POD_CIDR)"
    ip link add "$NODE_BRIDGE" type bridge || die "cannot create bridge $NODE_BRIDGE"
  fi
  local prefix="${POD_CIDR#*/}"
  if ! ip -4 addr show dev "$NODE_BRIDGE" | grep -qw "inet $NODE_IP/$prefix"; then
    ip addr add "$NODE_IP/$prefix" dev "$NODE_BRIDGE" || die "cannot add $NODE_IP/$prefix to $NODE_BRIDGE"
  fi
  ip link set "$NODE_BRIDGE" up
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
}

remove_node_network() {
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || return 0
  ip link del "$NODE_BRIDGE" 2>/dev/null || step "could not delete bridge $NODE_BRIDGE"
}

# node_cgroup_dirs: the kubelet's pod cgroups (cgroupfs driver, v1 or v2), deepest first.
node_cgroup_dirs() {
  local root
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$root" ]] && find "$root" -depth -type d
  done
  return 0
}

# kill_node_pods: SIGKILLs every process in the pods' cgroups, thawing frozen ones first
# (the e2e tests freeze containers), then removes the empty cgroups.
kill_node_pods() {
  local dir pid
  for dir in $(node_cgroup_dirs); do
    # Cgroups vanish as their containers end: every access may find nothing.
    if [[ "$(cat "$dir/freezer.state" 2>/dev/null)" == FROZEN ]]; then
      { echo THAWED >"$dir/freezer.state"; } 2>/dev/null || true
    fi
    { echo 0 >"$dir/cgroup.freeze"; } 2>/dev/null || true
    for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  local deadline=$((SECONDS + 10))
  for dir in $(node_cgroup_dirs); do
    until rmdir "$dir" 2>/dev/null || [[ ! -d "$dir" ]]; do
      (( SECONDS < deadline )) || { step "cgroup $dir is still busy"; break; }
      sleep 0.2
    done
  done
}

# unmount_under DIR: unmounts everything mounted below DIR (pod volumes, container root
# filesystems, sandbox /dev/shm, network namespaces), deepest first.
unmount_under() {
  local dir="${1%/}" mnt
  [[ -d "$dir" ]] || return 0
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || step "could not unmount $mnt"
  done < <(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}
