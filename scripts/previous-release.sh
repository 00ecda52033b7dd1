#!/usr/bin/env bash
# Builds the previous release (tests/upgrade/previous: its tag and commit) once,
# for the upgrade tests: a git worktree of that commit under
# ${VP_RELEASES_DIR:-/var/tmp/virt-persona-releases}/<commit>/ (outside the
# checkout, so a fresh clone on the same machine finds it), its debug binaries,
# and its Debian package built from them (PROFILE=dev NO_BUILD=1, as
# tests/package.rs builds this release's). Cached: a second run only prints.
# Prints the worktree's directory on its last line; needs the commit in this
# clone's history (a clone with --depth cannot build it).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r tag commit < tests/upgrade/previous
base=${VP_RELEASES_DIR:-/var/tmp/virt-persona-releases}
tree=$base/$commit
log() { printf 'previous-release: %s\n' "$*" >&2; }
done_mark=$tree/.virt-persona-built
if [ -f "$done_mark" ]; then
  echo "$tree"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  log "commit $commit ($tag) is not in this clone's history: fetch it (git fetch --unshallow) to build the previous release"
  exit 1
fi
mkdir -p "$base"
if [ ! -d "$tree" ]; then
  log "checking out $tag ($commit) into $tree"
  git worktree prune
  git worktree add --detach "$tree" "$commit" >&2
fi
log "building $tag in $tree (once; cached)"
started=$(date +%s)
( cd "$tree" && CARGO_TARGET_DIR="$tree/target" cargo build --bins --quiet >&2 )
( cd "$tree" && PROFILE=dev NO_BUILD=1 bash scripts/package.sh >&2 )
touch "$done_mark"
log "built $tag in $(( $(date +%s) - started )) s"
echo "$tree"
