#!/usr/bin/env bash
# Installs the system packages that some tests use: Debian's Chromium (browser tests of the
# labeling app) and PostgreSQL (store tests on a real server). Tests that need them skip with a
# reason when they are missing, so this is best-effort: it needs root and apt-get.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: ${need[*]} missing and cannot install without root+apt; those tests will skip" >&2
    exit 0
fi
echo "installing ${need[*]} from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "note: could not install ${need[*]}; those tests will skip" >&2
exit 0
