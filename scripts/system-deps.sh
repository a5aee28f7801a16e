#!/usr/bin/env bash
# Installs the Debian packages patchsight needs when they are missing (as root,
# with apt-get). Says clearly what to install by hand otherwise.
set -euo pipefail

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
# validates docker-compose.yml in the suite (the Docker client here has no compose plugin)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v redis-server >/dev/null || need+=(redis-server)
if [[ "${PATCHSIGHT_SKIP_BROWSER:-0}" != 1 ]]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${need[*]}" >&2
  echo "install them (e.g. sudo apt-get install ${need[*]}) and run make again" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
