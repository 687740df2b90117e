#!/usr/bin/env bash
# Installs what qreplica needs on a Debian machine: QEMU 7.2 tools, test oracles, npm packages.
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

# Native addons (better-sqlite3, zstd-napi) are compiled here from their bundled sources:
# build-from-source keeps prebuild-install from trying to download binaries.
if [ -L node_modules ]; then
  # npm ci empties node_modules through the link: the checkout it points to would lose its packages.
  echo "install.sh: node_modules is a symbolic link (a worktree sharing another checkout's packages): npm ci skipped; run install.sh in $(readlink -f node_modules)/.."
elif [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "install.sh: npm ci (compiles native addons, about 3 minutes)"
  npm_config_build_from_source=true npm ci --no-audit --no-fund
fi

# The bins (bin/qreplica.js, bin/qreplica-agent.js) run the compiled JavaScript in dist/.
echo "install.sh: npm run build (tsc into dist/)"
npm run build --silent
