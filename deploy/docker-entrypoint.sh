#!/bin/sh
# The container's entrypoint: `tidings ARGS` (CMD is `serve`), after writing a config with
# `tidings init` the first time, when the data volume has none. `serve` then applies any pending
# database migrations before it listens (so does init, against TIDINGS_DATABASE__URL).
# The values that matter in a container come from TIDINGS_* variables, which override the file.
set -eu

config="${TIDINGS_CONFIG:-/var/lib/tidings/tidings.toml}"
if [ ! -e "$config" ] && [ "${1:-}" != init ]; then
    dir=$(dirname "$config")
    tidings init --dir "$dir" >&2
    if [ "$dir/tidings.toml" != "$config" ]; then
        mv "$dir/tidings.toml" "$config"
    fi
fi
exec tidings "$@"
