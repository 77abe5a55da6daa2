# shellcheck shell=bash
# The base images the Dockerfiles name, made here from Debian packages because no container
# registry is reachable: debian:bookworm-slim (mmdebstrap's minbase, slimmed as the official
# image is) and gcr.io/distroless/static-debian12:nonroot (the files of base-files, netbase,
# tzdata and ca-certificates, and the nonroot user, as distroless assembles them). Each is
# tagged with the name the Dockerfile uses, so the Dockerfiles stay as a user with network
# runs them. Sourced by tests/images/build; expects note and die.

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${RBEE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SLIM_IMAGE=docker.io/library/debian:bookworm-slim
DISTROLESS_IMAGE=gcr.io/distroless/static-debian12:nonroot
BASE_LABEL=dev.rbee.local-base
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# base_recipe_key: changes when this recipe or the suite does, so the bases are rebuilt.
base_recipe_key() {
  { cat "${BASH_SOURCE[0]}"; echo "$DEBIAN_SUITE"; } | sha256sum | cut -c1-12
}

# base_current IMAGE: the image exists, made by this recipe.
base_current() {
  [[ "$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$BASE_LABEL\"}}" "$1" 2>/dev/null)" == "$(base_recipe_key)" ]]
}

# commit_rootfs TAR IMAGE CONFIG...: an image of one layer from TAR, with buildah config flags.
commit_rootfs() {
  local tar="$1" image="$2"
  shift 2
  local ctr
  ctr="$(buildah from --quiet scratch)"
  buildah add --quiet "$ctr" "$tar" / >/dev/null
  buildah config --label "$BASE_LABEL=$(base_recipe_key)" "$@" "$ctr"
  buildah commit --quiet --rm "$ctr" "$image" >/dev/null
}

make_debian_slim() {
  local tmp="$1/slim.tar"
  # The official image's slimming (debuerreotype): no docs but copyrights, no man pages,
  # locales or apt lists; merged /usr without the usrmerge package.
  # shellcheck disable=SC2016  # mmdebstrap's hook expands $1 (the new root)
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log "$1"/var/log/apt/*' \
    "$DEBIAN_SUITE" "$tmp" "$DEBIAN_MIRROR" >"$1/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "$1/mmdebstrap.log" >&2; die "mmdebstrap of $DEBIAN_SUITE failed"; }
  commit_rootfs "$tmp" "$SLIM_IMAGE" --env "$PATH_ENV" --cmd '["bash"]'
}

make_distroless_static() {
  local debs="$1/debs" root="$1/rootfs" pkg
  mmdebstrap --variant=extract --mode=root --format=directory \
    --include=base-files,netbase,tzdata,ca-certificates --aptopt='Acquire::Languages "none"' \
    "$DEBIAN_SUITE" "$debs" "$DEBIAN_MIRROR" >"$1/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "$1/mmdebstrap.log" >&2; die "mmdebstrap (extract) of $DEBIAN_SUITE failed"; }
  install -d -m 755 "$root"/{etc/ssl/certs,usr/lib,usr/share/doc,var/lib/dpkg}
  install -d -m 1777 "$root/tmp"
  install -d -m 700 -o 65532 -g 65532 "$root/home/nonroot"
  install -d -m 700 "$root/root"
  cp "$debs/usr/lib/os-release" "$root/usr/lib/os-release"
  ln -s ../usr/lib/os-release "$root/etc/os-release"
  cp "$debs"/etc/{services,protocols,ethertypes,rpc} "$root/etc/"
  cp -a "$debs/usr/share/zoneinfo" "$root/usr/share/"
  # What update-ca-certificates writes: every certificate the package ships, concatenated.
  cat "$debs"/usr/share/ca-certificates/*/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  for pkg in base-files netbase tzdata ca-certificates; do
    install -D -m 644 "$debs/usr/share/doc/$pkg/copyright" "$root/usr/share/doc/$pkg/copyright"
  done
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
  tar --numeric-owner -C "$root" -cf "$1/distroless.tar" .
  commit_rootfs "$1/distroless.tar" "$DISTROLESS_IMAGE" --env "$PATH_ENV" \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --user 65532 --workingdir /home/nonroot
}

# ensure_base_images: makes whichever base is missing or from an older recipe.
ensure_base_images() {
  local image make tmp
  for image in "$SLIM_IMAGE" "$DISTROLESS_IMAGE"; do
    base_current "$image" && continue
    case "$image" in
      "$SLIM_IMAGE") make=make_debian_slim ;;
      *) make=make_distroless_static ;;
    esac
    note "making the base image $image locally from Debian $DEBIAN_SUITE packages (mmdebstrap)"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/rbee-base.XXXXXX")"
    "$make" "$tmp"
    rm -rf "$tmp"
  done
}
