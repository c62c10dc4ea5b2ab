#!/usr/bin/env bash
# Build the CPU part of fastrecur._C with AddressSanitizer + UndefinedBehaviorSanitizer in a temporary
# directory (torch.utils.cpp_extension.load, same sources and flags as setup.py) and run the extension's
# equality tests against it. Fails if the build fails, a test fails, or a sanitizer reports anything.
#
# Usage: scripts/asan_check.sh [extra pytest args]     (run from anywhere; uses $PYTHON, default .venv/bin/python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
# load() also loads the library it built, so the build process needs the sanitizer runtimes preloaded too.
ROOT="$ROOT" LD_PRELOAD="$LIBASAN:$LIBUBSAN" ASAN_OPTIONS=detect_leaks=0 "$PY" - "$TMP" <<'PYEOF'
import os, sys
sys.path.insert(0, os.path.join(os.environ["ROOT"], "csrc"))
import build_config
san = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-g", "-O1")
build_config.build_cpu_variant(sys.argv[1], extra_cflags=san, extra_ldflags=("-fsanitize=address,undefined",),
                               drop_cflags=("-O3",), name="fastrecur_C_asan")
PYEOF
SO="$TMP/fastrecur_C_asan.so"
[[ -f "$SO" ]] || { echo "sanitizer build produced no $SO" >&2; exit 1; }
LOG="$TMP/san"
# Leak checking is off: the Python interpreter itself "leaks" by design at exit.
set +e
LD_PRELOAD="$LIBASAN:$LIBUBSAN" ASAN_OPTIONS="detect_leaks=0:log_path=$LOG.asan" \
  UBSAN_OPTIONS="print_stacktrace=1:log_path=$LOG.ubsan" FASTRECUR_EXT_LIBRARY="$SO" FASTRECUR_REQUIRE_EXT=1 \
  "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_cpp_extension.py" "$@"
rc=$?
set -e
if compgen -G "$LOG.*" > /dev/null; then
  echo "sanitizer findings:" >&2
  cat "$LOG".* >&2
  exit 1
fi
[[ $rc -eq 0 ]] || { echo "tests failed under the sanitizers (rc=$rc)" >&2; exit $rc; }
echo "asan_check: no sanitizer findings, tests passed"
