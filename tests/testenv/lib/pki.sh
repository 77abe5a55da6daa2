# shellcheck shell=bash
# shellcheck disable=SC2034  # used by lib/components.sh
# The testenv PKI (openssl) and kubeconfigs. Sourced by tests/testenv/testenv; expects STATE,
# API_HOST, API_PORT, NODE_NAME, NODE_IP and the step/die helpers.

PKI_DIR_NAME=pki
# The first address of --service-cluster-ip-range: the `kubernetes` Service's ClusterIP.
SERVICE_CIDR=10.96.0.0/12
KUBERNETES_SERVICE_IP=10.96.0.1
SA_ISSUER=https://kubernetes.default.svc.cluster.local

# make_ca NAME CN: a self-signed CA, NAME.crt/NAME.key.
make_ca() {
  local pki="$STATE/$PKI_DIR_NAME"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/$1.crt" 2>/dev/null || die "openssl could not create the CA $2"
}

# issue_cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES] [CA]: NAME.crt/NAME.key
# signed by CA (default: ca).
issue_cert() {
  local name="$1" subject="$2" eku="$3" sans="${4:-}" ca="${5:-ca}"
  local pki="$STATE/$PKI_DIR_NAME"
  local ext="$pki/$name.ext"
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = $eku"
    [[ -z "$sans" ]] || echo "subjectAltName = $sans"
  } > "$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -extfile "$ext" \
    -out "$pki/$name.crt" 2>/dev/null || die "openssl could not sign the $name certificate"
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# ensure_pki: a CA, the API server's serving cert, one client cert per component, and the
# service-account signing key pair. Kept while the state directory exists.
ensure_pki() {
  local pki="$STATE/$PKI_DIR_NAME"
  [[ -f "$pki/done" ]] && return
  command -v openssl >/dev/null || die "openssl is not installed: install it (apt-get install openssl)"
  step "generating certificates and keys in $pki"
  rm -rf "$pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  make_ca ca rbee-testenv-ca
  # The aggregation layer's front proxy has its own CA, as in kubeadm: the API server
  # publishes it (requestheader-client-ca-file) for delegated authentication in the
  # controller-manager and scheduler, and for aggregated API servers.
  make_ca front-proxy-ca rbee-testenv-front-proxy-ca
  issue_cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
  issue_cert kube-apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,IP:$NODE_IP"
  issue_cert admin "/O=system:masters/CN=admin" clientAuth
  issue_cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue_cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
  issue_cert kwok "/O=system:masters/CN=kwok-controller" clientAuth
  # rbee-local-0's kubelet identity: the Node authorizer lets it renew its own Lease and mint
  # tokens for the ServiceAccounts of pods bound to it, as the e2e runner's "kubelet" needs.
  issue_cert node-rbee-local-0 "/O=system:nodes/CN=system:node:rbee-local-0" clientAuth
  # The real node: its kubelet's identity and serving certificate, kube-proxy, CoreDNS, and
  # the API server's client certificate for the kubelet (logs, exec).
  issue_cert "node-$NODE_NAME" "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue_cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
  issue_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  issue_cert coredns "/CN=system:rbee-coredns" clientAuth
  issue_cert kube-apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" clientAuth
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
  touch "$pki/done"
}

# kubeconfig_header USER: cluster and context parts of a kubeconfig for USER.
kubeconfig_header() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rbee-testenv
  cluster:
    server: https://$API_HOST:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$STATE/$PKI_DIR_NAME/ca.crt")
contexts:
- name: rbee-testenv
  context:
    cluster: rbee-testenv
    user: $1
current-context: rbee-testenv
EOF
}

# write_cert_kubeconfig FILE CERT_NAME: a kubeconfig authenticating with pki/CERT_NAME.crt.
write_cert_kubeconfig() {
  local file="$1" name="$2" pki="$STATE/$PKI_DIR_NAME"
  {
    kubeconfig_header "$name"
    cat <<EOF
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 < "$pki/$name.crt")
    client-key-data: $(base64 -w0 < "$pki/$name.key")
EOF
  } > "$file.tmp"
  chmod 600 "$file.tmp"
  mv -f "$file.tmp" "$file"
}

# write_token_kubeconfig FILE USER TOKEN
write_token_kubeconfig() {
  local file="$1" user="$2" token="$3"
  {
    kubeconfig_header "$user"
    cat <<EOF
users:
- name: $user
  user:
    token: $token
EOF
  } > "$file.tmp"
  chmod 600 "$file.tmp"
  mv -f "$file.tmp" "$file"
}

ensure_kubeconfigs() {
  write_cert_kubeconfig "$STATE/kubeconfig" admin
  local name
  for name in kube-controller-manager kube-scheduler kwok node-rbee-local-0 "node-$NODE_NAME" kube-proxy coredns; do
    write_cert_kubeconfig "$STATE/$name.kubeconfig" "$name"
  done
}
