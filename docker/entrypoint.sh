#!/bin/sh
# The image's entry point: prepares the environment for the work tree mounted at /work, then runs the
# command given to `docker run` (the image's CMD, `dvc repro`, when none is given).
set -eu

# The DVC cache goes to the /cache/dvc volume when one is mounted there, so that it outlives the
# container; without that volume DVC keeps its cache in the work tree's .dvc/cache, as it does outside
# Docker. The setting lives in a system-level DVC config of the image (DVC has no environment variable
# for the cache dir), so nothing is written into the mounted work tree, and the project's or the user's
# own `cache.dir` (in .dvc/config or .dvc/config.local) still wins over it.
if mountpoint -q /cache/dvc 2>/dev/null; then
    export DVC_SYSTEM_CONFIG_DIR=/etc/dvc-cache-volume
fi

# `docker run --user UID:GID` (so that files on the mount belong to you) runs as a user the image does
# not know, whose HOME is `/`, not writable: give such a user a HOME it can write.
if [ ! -w "${HOME:-/}" ]; then
    export HOME=/tmp
fi
# Such a user has no name either: getpass.getuser() (DVC's repo lock, torch's caches) then asks the
# passwd database and fails ("getpwuid(): uid not found"); it reads $USER/$LOGNAME first.
if ! id -un >/dev/null 2>&1; then
    export USER="${USER:-uid$(id -u)}"
    export LOGNAME="${LOGNAME:-$USER}"
fi

# `dvc exp run` commits experiments to git refs, which needs an identity. The host's ~/.gitconfig is not
# in the container: when no name or email is configured (system or repository config, or the GIT_*
# variables), use a placeholder rather than fail. Pass -e GIT_AUTHOR_NAME=... etc. to choose your own.
if [ -z "${GIT_AUTHOR_EMAIL:-}" ] && ! git config user.email >/dev/null 2>&1; then
    export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-dvc in docker}" GIT_AUTHOR_EMAIL="dvc@container.invalid"
    export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}"
    export GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
fi

if [ "$#" -eq 0 ]; then
    set -- dvc repro
fi
exec "$@"
