#!/bin/sh
# Copies the image's shipped heads (SRC) onto the heads volume a classifier serves (DST), then runs the rest of the
# arguments, if any (the classifier itself, in deploy/compose.learn.yaml). The chart's classifier init container and
# compose run it before every classifier start, so a new image's shipped heads reach the volume.
#
# A head that `tierwise learn` or `tierwise promote` replaced on the volume (its directory keeps head.json.previous) is
# left alone, and heads of other names (learned-...) are never touched. A head.json is written only when it differs,
# and atomically (copy to a temporary file of this run's own, then rename): classifiers serving the volume reload
# nothing half-written, nor needlessly, and pods seeding a shared volume at once never write into each other's copy.
#
#   deploy/seed-heads.sh SRC DST [COMMAND ...]
set -eu
[ $# -ge 2 ] || { echo "usage: seed-heads.sh SRC DST [COMMAND ...]" >&2; exit 2; }
src=$1
dst=$2
shift 2
tmp=""
trap 'rm -f "$tmp"' EXIT
# A signal ends the shell without the EXIT trap: exit instead, which runs it (a killed init container would leave a
# temporary copy of a head on the shared volume at every restart).
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# Atomically replace FILE (in DIR) with a copy of SRC_FILE: `put SRC_FILE DIR FILE`.
put() {
    tmp=$(mktemp "$2/.$3.XXXXXX")  # unique, in the same directory (and filesystem) as what it replaces
    cp "$1" "$tmp"
    chmod 644 "$tmp"  # mktemp's 0600 would hide the head from a classifier or `tierwise learn` of another uid
    mv -f "$tmp" "$2/$3"
    tmp=""
}

mkdir -p "$dst"
# The lock `tierwise promote`, `learn` and `calibrate` hold while they check and replace a head here
# (tierwise/atomic.py): a promotion between this run's check for head.json.previous and its copy would be lost.
# NFS takes no lock on a directory (it needs a file open for writing): as atomic.py does, say so and go on.
if command -v flock >/dev/null 2>&1; then
    exec 9<"$dst"
    flock 9 || echo "seed-heads: cannot lock $dst; make sure no promotion runs while the classifier starts" >&2
fi
for dir in "$src"/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    [ -f "$dir/head.json" ] || continue
    target="$dst/$name"
    if [ -e "$target/head.json.previous" ]; then
        echo "seed-heads: $target serves a promoted head; kept"
        continue
    fi
    if cmp -s "$dir/head.json" "$target/head.json"; then
        continue
    fi
    mkdir -p "$target"
    if [ -f "$dir/MODEL_CARD.md" ]; then
        put "$dir/MODEL_CARD.md" "$target" MODEL_CARD.md
    fi
    put "$dir/head.json" "$target" head.json
    echo "seed-heads: $target/head.json from $dir"
done
exec 9<&-  # the lock, which the command run next must not inherit
if [ $# -gt 0 ]; then
    exec "$@"
fi
