#!/usr/bin/env bash
# The project's test command (see README): works from a fresh Debian 12 clone.
#
#   scripts/test.sh [pytest args...]      e.g.  scripts/test.sh -m unit -x
#
# 1. installs the Debian packages the tests need (as root, or via sudo) if missing;
#    system services are NOT started - the test fixtures run their own servers;
# 2. creates .venv (python3 >= 3.11) and installs the project with its dev extras;
# 3. static checks: ruff check, mypy, lint-imports;
# 4. pytest "$@" (exit code 5 "no tests collected" counts as a failure).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(mosquitto influxdb postgresql mbpoll libcoap3-bin chromium chromium-driver fonts-wqy-microhei)
PYTHON="${PYTHON:-python3}"
VENV=.venv

section() { printf '\n==== %s ====\n' "$*"; }
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

# A binary that proves the package is usable even if dpkg does not know it.
package_binary() {
    case "$1" in
        mosquitto) echo mosquitto ;;
        influxdb) echo influxd ;;
        postgresql) echo initdb ;;
        mbpoll) echo mbpoll ;;
        libcoap3-bin) echo coap-client-notls ;;
        chromium) echo chromium ;;
        chromium-driver) echo chromedriver ;;
        fonts-wqy-microhei) echo "" ;; # a CJK font: the console's screenshots show Chinese
        python3-venv) echo "" ;;
        *) echo "$1" ;;
    esac
}

package_present() {
    local pkg=$1 bin
    if command -v dpkg-query >/dev/null 2>&1 &&
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        return 0
    fi
    bin=$(package_binary "$pkg")
    [[ -n $bin ]] || return 1
    command -v "$bin" >/dev/null 2>&1 && return 0
    # Debian's postgresql keeps initdb off PATH, mosquitto lives in /usr/sbin.
    compgen -G "/usr/lib/postgresql/*/bin/$bin" >/dev/null || [[ -x /usr/sbin/$bin ]]
}

# ---------------------------------------------------------------------------
section "System packages"
wanted=("${APT_PACKAGES[@]}")
if [[ ! -x $VENV/bin/python ]] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    wanted+=(python3-venv) # Debian's python3 cannot create venvs without it
fi
missing=()
for pkg in "${wanted[@]}"; do
    package_present "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "all present: ${wanted[*]}"
else
    echo "missing: ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "cannot install ${missing[*]}: not root and sudo not found.
Run as root:  apt-get update && apt-get install -y ${missing[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found (Debian 12 expected). Install: ${missing[*]}"

    # Keep Debian maintainer scripts from starting system services (mosquitto,
    # influxdb, postgresql): the fixtures start private servers on free ports.
    POLICY=/usr/sbin/policy-rc.d
    if [[ ! -e $POLICY ]]; then
        "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
        trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update ||
        die "apt-get update failed; cannot install ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}" ||
        die "apt-get install failed for: ${missing[*]}"
    for pkg in "${missing[@]}"; do
        package_present "$pkg" || die "package $pkg still missing after apt-get install"
    done
fi

# ---------------------------------------------------------------------------
section "Python environment ($VENV)"
if [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (need Python >= 3.11)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required (set PYTHON=...)"
    echo "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$VENV uses $("$VENV/bin/python" -V 2>&1); Python >= 3.11 is required. Remove $VENV."

# Reinstall only when the dependency spec changed (keeps repeat runs fast and offline).
CONSTRAINTS=()
[[ -f constraints.txt ]] && CONSTRAINTS=(-c constraints.txt)
spec_hash=$(cat pyproject.toml ${CONSTRAINTS[@]:+constraints.txt} | sha256sum | cut -d' ' -f1)
stamp=$VENV/.scripts-test-sh-installed
if [[ -f $stamp && $(cat "$stamp") == "$spec_hash" ]]; then
    echo "dependencies up to date"
else
    "$VENV/bin/python" -m pip install "${CONSTRAINTS[@]}" -e '.[dev]' ||
        die "pip install ${CONSTRAINTS[*]} -e '.[dev]' failed"
    echo "$spec_hash" >"$stamp"
fi
export VIRTUAL_ENV="$PWD/$VENV"
export PATH="$VIRTUAL_ENV/bin:$PATH"

# ---------------------------------------------------------------------------
section "ruff check"
ruff check .

section "mypy"
mypy

section "lint-imports"
lint-imports

# ---------------------------------------------------------------------------
section "pytest $*"
set +e
pytest "$@"
rc=$?
set -e
if ((rc == 5)); then
    die "no tests ran (pytest collected no tests; exit code 5) - that counts as a failure"
fi
if ((rc != 0)); then
    printf '\nFAILED: pytest exited with code %d\n' "$rc" >&2
    exit "$rc"
fi
section "all checks passed"
