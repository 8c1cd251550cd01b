#!/usr/bin/env bash
# The installed package, not the checkout: builds the wheel, installs it (not editable) in a fresh
# virtual environment outside the checkout, imports every module of the installed fedaux from outside
# the checkout, and trains one round with the installed fedaux-train. `make test` runs against the
# editable install, which sees every source file whatever the packaging says; this sees what a user
# of the wheel gets (a package left out of the wheel, data that does not ship, a broken entry point).
#
# Usage: .ci/check_wheel.sh   (PYTHON=... picks the interpreter that builds the wheel and seeds the
# new environment, by default .venv/bin/python; KEEP_WHEEL_CHECK=1 keeps the temporary folder.)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
WORK="$(cd "$(mktemp -d "${TMPDIR:-/tmp}/fedaux-wheel-check.XXXXXX")" && pwd -P)"
START=$SECONDS

# pip, less this machine's pip.conf noise (a line per package absent from a local extra index).
quiet_pip() { "$1" -m pip "${@:2}" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
log() { printf '[check_wheel %4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] || [ "${KEEP_WHEEL_CHECK:-0}" = 1 ]; then
        log "kept $WORK for inspection (exit status $rc)"
    else
        log "removing $WORK (a venv with torch: a minute or two on a slow disk)"
        rm -rf "$WORK"
        log "removed"
    fi
}
trap cleanup EXIT

case "$WORK/" in "$ROOT"/*) fail "the temporary folder $WORK lies inside the checkout $ROOT; set TMPDIR elsewhere" ;; esac

# 1. Build the wheel from a copy of the files git knows (tracked, and untracked but not ignored), so a
#    stale build/ or egg-info in the checkout cannot put modules into the wheel that the tree lacks.
log "copying the source tree to $WORK/src"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | "$PYTHON" -c 'import os, sys; [print(p) for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)]' \
        | tar --no-recursion -cf - -T -) | tar -xf - -C "$WORK/src"
else
    tar -C "$ROOT" --exclude=.venv --exclude=build --exclude='*.egg-info' --exclude=outputs --exclude=wandb \
        --exclude=__pycache__ --exclude=.git -cf - . | tar -xf - -C "$WORK/src"
fi
log "building the wheel with $("$PYTHON" -m pip --version | cut -d' ' -f1-2)"
quiet_pip "$PYTHON" wheel --quiet --no-deps --no-cache-dir --wheel-dir "$WORK/dist" "$WORK/src"
shopt -s nullglob
wheels=("$WORK"/dist/fedaux-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || fail "expected one fedaux wheel in $WORK/dist, found ${#wheels[@]}"
WHEEL="${wheels[0]}"
log "built wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

# The wheel against the source tree: every module of fedaux/ and callbacks/ (as fedaux.callbacks),
# the embedded data, and nothing at the top level but fedaux (no package named "callbacks").
"$PYTHON" - "$WHEEL" "$WORK/src" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, src = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
top = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
if top != ["fedaux"]:
    sys.exit(f"the wheel's top-level entries are {top}, expected only ['fedaux']")
expected = {"fedaux/" + p.relative_to(src / "fedaux").as_posix() for p in (src / "fedaux").rglob("*.py")}
expected |= {"fedaux/callbacks/" + p.relative_to(src / "callbacks").as_posix() for p in (src / "callbacks").rglob("*.py")}
missing = sorted(expected - names)
if missing:
    sys.exit(f"{len(missing)} source modules are missing from the wheel: " + ", ".join(missing))
data = sorted(n for n in names if n.startswith("fedaux/data/embedded/"))
for pattern in (".npz", "/LICENSE-", "/README.md"):
    if not any(pattern in n for n in data):
        sys.exit(f"no fedaux/data/embedded file matching {pattern!r} in the wheel: {data}")
packages = sorted({n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith(".py")})
print(f"wheel holds {len(packages)} packages, {sum(n.endswith('.py') for n in names)} modules "
      f"(all {len(expected)} of the source tree's), {len(data)} embedded data files")
print("  packages: " + ", ".join(packages))
print("  data: " + ", ".join(data))
EOF

# 2. A new virtual environment outside the checkout; torch==2.13.0 first (the CPU wheel this machine
#    carries: any other torch requirement downloads a multi-GB CUDA build), then the wheel itself.
VENV="$WORK/venv"
log "creating a new virtual environment at $VENV"
"$PYTHON" -m venv "$VENV"
VPY="$VENV/bin/python"
quiet_pip "$VPY" install --quiet torch==2.13.0
log "installed torch $("$VPY" -m pip show torch | sed -n 's/^Version: //p')"
quiet_pip "$VPY" install --quiet "$WHEEL"
"$VPY" -m pip show fedaux | grep -E '^(Name|Version|Location|Editable project location):' | sed 's/^/  pip show: /'
if "$VPY" -m pip show fedaux | grep -q '^Editable project location:'; then
    fail "fedaux was installed editable"
fi
log "installed $(basename "$WHEEL") non-editable into $VENV"

# 3. Import every module of the installed package with the current directory outside the checkout
#    and nothing on PYTHONPATH, so the source tree cannot shadow it.
cd "$WORK/run"
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
export WANDB_MODE=disabled WANDB_SILENT=true
"$VPY" - "$VENV" "$ROOT" <<'EOF'
import importlib
import importlib.metadata
import json
import pkgutil
import sys
import sysconfig
import traceback
from pathlib import Path

venv, checkout = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
site = Path(sysconfig.get_paths()["purelib"]).resolve()
if venv not in site.parents:
    sys.exit(f"site-packages {site} is not inside the new environment {venv}")

import fedaux

where = Path(fedaux.__file__).resolve()
if site not in where.parents:
    sys.exit(f"fedaux was imported from {where}, not from the new environment's {site}")
if checkout in where.parents:
    sys.exit(f"fedaux was imported from the checkout: {where}")
direct_url = json.loads(importlib.metadata.distribution("fedaux").read_text("direct_url.json") or "{}")
if direct_url.get("dir_info", {}).get("editable"):
    sys.exit(f"fedaux is an editable install: {direct_url}")
print(f"fedaux.__file__ = {where}")

failures: dict[str, str] = {}
walked = {m.name for m in pkgutil.walk_packages(fedaux.__path__, "fedaux.",
                                                onerror=lambda name: failures.setdefault(name, traceback.format_exc()))}
# pkgutil does not descend into folders without __init__.py (implicit namespace packages such as
# fedaux.federated), so the files on disk are listed too.
root = Path(fedaux.__path__[0])
on_disk = set()
for path in root.rglob("*.py"):
    parts = ("fedaux",) + path.relative_to(root).with_suffix("").parts
    on_disk.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
names = sorted(walked | on_disk | {"fedaux"})
# __main__ modules run their program on import (python -m fedaux.bench runs a benchmark): compile them.
mains = [n for n in names if n.rsplit(".", 1)[-1] == "__main__"]
imported = 0
for name in names:
    if name in failures:
        continue
    try:
        if name in mains:
            module_path = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
            compile(module_path.read_text(), str(module_path), "exec")
            importlib.import_module(name.rsplit(".", 1)[0])
            continue
        module = importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - a module that exits or raises anything at import fails the check
        failures[name] = traceback.format_exc()
        continue
    origin = Path(getattr(module, "__file__", None) or next(iter(module.__path__))).resolve()
    if site not in origin.parents:
        failures[name] = f"imported from {origin}, outside {site}"
        continue
    imported += 1
for name, error in sorted(failures.items()):
    print(f"--- {name} failed to import:\n{error}", file=sys.stderr)
print(f"{imported} modules of the installed fedaux imported from outside the checkout "
      f"({len(walked)} found by pkgutil.walk_packages, {len(set(names) - walked - {'fedaux'})} more in namespace "
      f"folders it does not descend into; {len(mains)} __main__ module(s) compiled, not run: {', '.join(mains) or '-'})")
if failures:
    sys.exit(f"{len(failures)} modules failed: {', '.join(sorted(failures))}")
EOF
log "imported every module of the installed package from $PWD"

# 4. One round of training from the installed package with its console script.
OUTPUT="$WORK/run/outputs"
log "training one round: fedaux-train --config $ROOT/conf/quic.yaml (installed console script)"
"$VENV/bin/fedaux-train" --config "$ROOT/conf/quic.yaml" \
    federated.rounds=1 federated.base_stations=2 federated.edge_servers=1 data.subflows_per_flow=4 \
    logging.wandb.mode=disabled logging.energy=false logging.plots=false output_dir="$OUTPUT" \
    > "$WORK/train.log" 2>&1 || { tail -n 60 "$WORK/train.log"; fail "fedaux-train exited with an error"; }
SUMMARY="$(find "$OUTPUT" -name summary.json -print -quit)"
[ -n "$SUMMARY" ] || { tail -n 60 "$WORK/train.log"; fail "the run wrote no summary.json under $OUTPUT"; }
"$VPY" - "$SUMMARY" <<'EOF'
import json
import sys

summary = json.load(open(sys.argv[1]))
if summary.get("rounds") != 1 or summary.get("final_accuracy") is None:
    sys.exit(f"{sys.argv[1]}: expected one round with a final accuracy: {summary}")
print(f"summary.json: rounds {summary['rounds']}, final_accuracy {summary['final_accuracy']:.4f}, "
      f"final_f1 {summary.get('final_f1')}")
EOF
log "one round trained from the installed package: $SUMMARY"
log "PASS: wheel $(basename "$WHEEL") builds, installs non-editable and runs ($((SECONDS - START)) s in all)"
