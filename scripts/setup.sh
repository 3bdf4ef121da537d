#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: the system packages the tests need (Go and the Go
# libraries of the real peers, OpenSSH, cadaver, rclone), the npm dependencies (which bring
# Node 24 into node_modules/.bin when the system Node is older), and the Go test programs.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(golang-go golang-github-hashicorp-yamux-dev golang-golang-x-crypto-dev
  golang-golang-x-net-dev openssh-client cadaver rclone unzip ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

npm ci --no-audit --no-fund
./node_modules/.bin/node scripts/build-go.ts
./node_modules/.bin/node scripts/install-kubectl.ts
echo "setup: done ($(./node_modules/.bin/node --version))"
