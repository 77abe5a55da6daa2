# shellcheck shell=bash
# Cargo's build outputs for tests/check and tests/demo, kept across clones.
# Sourced from the repository root. Where ./target does not exist yet (a fresh clone), it becomes
# a link to a folder keyed by the Rust toolchain, so the dependencies compiled by an earlier
# clone are reused. An existing ./target (folder or link) is left as it is.
# RBEE_CARGO_TARGET_CACHE=0 opts out.
#
# Cargo names this workspace's own crates by their path relative to the workspace, and judges
# them fresh by file times, so a build from another clone could pass for this one's: when the
# folder was last used by another clone, their fingerprints are dropped and they are rebuilt.

use_cargo_target_cache() {
  [[ "${RBEE_CARGO_TARGET_CACHE:-1}" != 0 ]] || return 0
  [[ -z "${CARGO_TARGET_DIR:-}" ]] || return 0
  local cache="${RBEE_CACHE:-$HOME/.cache/rbee}" key dir
  if [[ ! -e target && ! -L target ]]; then
    key="$(rustc -vV | sha256sum | cut -c1-12)" || return 0
    dir="$cache/cargo-target-$(rustc -V | awk '{print $2}')-$key"
    mkdir -p "$dir"
    ln -s "$dir" target
    echo "cargo builds into $dir (./target links there; RBEE_CARGO_TARGET_CACHE=0 keeps them here)" >&2
  fi
  dir="$(readlink -f target)"
  [[ "$dir" == "$cache"/cargo-target-* ]] || return 0
  [[ "$(cat "$dir/.rbee-checkout" 2>/dev/null)" != "$PWD" ]] || return 0
  local name
  for name in $(workspace_crates); do
    find "$dir" -maxdepth 4 -type d -path "*/.fingerprint/$name-*" -prune -exec rm -rf {} +
  done
  echo "$PWD" > "$dir/.rbee-checkout"
}

workspace_crates() {
  cargo metadata --no-deps --format-version 1 --offline \
    | python3 -c 'import json, sys; print(*(p["name"] for p in json.load(sys.stdin)["packages"]))'
}
