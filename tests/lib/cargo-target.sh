# shellcheck shell=bash
# Cargo's build outputs for tests/check and tests/demo, kept across clones.
# Sourced from the repository root. Where ./target does not exist yet (a fresh clone), it becomes
# a link to a folder keyed by the Rust toolchain, so the dependencies compiled by an earlier
# clone are reused; cargo still rebuilds whatever changed, this repository's crates included.
# An existing ./target (folder or link) is left as it is. RBEE_CARGO_TARGET_CACHE=0 opts out.

use_cargo_target_cache() {
  [[ "${RBEE_CARGO_TARGET_CACHE:-1}" != 0 ]] || return 0
  [[ -e target || -L target ]] && return 0
  [[ -z "${CARGO_TARGET_DIR:-}" ]] || return 0
  local key dir
  key="$(rustc -vV | sha256sum | cut -c1-12)" || return 0
  dir="${RBEE_CACHE:-$HOME/.cache/rbee}/cargo-target-$(rustc -V | awk '{print $2}')-$key"
  mkdir -p "$dir"
  ln -s "$dir" target
  echo "cargo builds into $dir (./target links there; RBEE_CARGO_TARGET_CACHE=0 keeps them here)" >&2
}
