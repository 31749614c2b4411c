#!/usr/bin/env bash
# The core under sanitizers (docs/testing.md, "Sanitizers"):
#   bash scripts/sanitize.sh address   # AddressSanitizer + UndefinedBehaviorSanitizer
#   bash scripts/sanitize.sh thread    # ThreadSanitizer
#   bash scripts/sanitize.sh address tests/test_faults.py -k kill   # other pytest arguments instead of the set below
# Builds an instrumented extension into .sanitize/KIND (beside .venv's normal one, which stays as it is), puts it
# first on PYTHONPATH, preloads the sanitizer's runtime into every Python process (the peers the tests start
# inherit both), runs the tests, and fails if any process wrote a sanitizer report (they go to
# .sanitize/KIND/reports/, one file per process, and are printed at the end). The native tests (cpp/tests/) are
# built with the same sanitizer into build/native-sanitize-KIND and run first, always; a failure fails the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
kind=${1:?usage: scripts/sanitize.sh address|thread [pytest arguments]}
shift
case "$kind" in
  address) flags=address,undefined; runtime=libasan.so ;;
  thread) flags=thread; runtime=libtsan.so ;;
  *) echo "unknown sanitizer '$kind': address or thread" >&2; exit 2 ;;
esac
dir=$PWD/.sanitize/$kind
if [ -z "${PCCL_SANITIZE_REUSE:-}" ]; then  # PCCL_SANITIZE_REUSE=1: run again with the last build
  bash scripts/setup.sh >/dev/null  # .venv with the test dependencies
  rm -rf "$dir"
  echo "building pccl_arrays with -fsanitize=$flags into $dir ..."
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --target "$dir/lib" \
    --config-settings=cmake.define.PCCL_SANITIZE="$flags" --config-settings=build-dir="build/sanitize-$kind" \
    --config-settings=install.strip=false .  # symbols, for reports with file and line
fi
native=build/native-sanitize-$kind
if [ -z "${PCCL_SANITIZE_REUSE:-}" ]; then
  echo "building the native tests with -fsanitize=$flags into $native ..."
  .venv/bin/cmake -S . -B "$native" -G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/.venv/bin/ninja" -DPCCL_PYTHON=OFF \
    -DPCCL_NATIVE_TESTS=ON -DPCCL_SANITIZE="$flags" >/dev/null
  .venv/bin/cmake --build "$native" -j2 >"$native/build.log" 2>&1 || { tail -40 "$native/build.log"; exit 1; }
fi
rm -rf "$dir/reports"
mkdir -p "$dir/reports"

# The native tests: executables linked with the runtime themselves (nothing to preload), reports beside the
# others. Leaks are looked for here, where no Python interpreter holds memory until exit.
set +e
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:log_path=$dir/reports/native-asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$dir/reports/native-ubsan" \
TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:log_path=$dir/reports/native-tsan" \
  .venv/bin/ctest --test-dir "$native" --output-on-failure --no-tests=error 2>&1 | tee "$dir/native.log"
native_status=${PIPESTATUS[0]}
set -e

# The tests of the core: every multi-process test and every protocol and master test, without the ones that
# load torch or JAX (their native libraries do not run under a preloaded sanitizer runtime: jaxlib aborts in
# ASan's exception interceptor), and without the Triton peer of test_quant_ring (PCCL_ARRAYS_SANITIZED).
tests=(tests/test_protocol_*.py tests/test_master_*.py tests/test_allreduce_*.py tests/test_faults*.py
       tests/test_contract_*.py tests/test_state_*.py tests/test_security*.py tests/test_topology*.py
       tests/test_quant_ring.py tests/test_quant_kernels.py tests/test_buffer_pool.py tests/test_wan*.py
       tests/test_abuse.py tests/test_lifetime.py tests/test_collectives.py tests/test_api_surface.py
       -k "not torch and not jax and not memory_limit and not machine_is_not_the_bottleneck")
# (memory_limit: ASan's shadow memory cannot live under RLIMIT_AS; machine_is_not_the_bottleneck asserts the
# Python relay's own speed, which an intercepted interpreter does not reach under TSan)
[ $# -gt 0 ] && tests=("$@")

export PYTHONPATH="$dir/lib${PYTHONPATH:+:$PYTHONPATH}"
# The runtime first; libstdc++ right after it, so that its interceptors find the real __cxa_throw (Python does
# not link libstdc++; without this ASan aborts at the first C++ exception the extension throws).
export LD_PRELOAD="$(gcc -print-file-name=$runtime):$(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$dir/reports/asan"  # Python itself never frees everything
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$dir/reports/ubsan"
# A race is reported and the process goes on, so one run collects them all (memory errors stop it at once).
export TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:log_path=$dir/reports/tsan"
export PCCL_ARRAYS_SANITIZED="$kind"
start=$(date +%s)
set +e
.venv/bin/pytest -q -p no:cacheprovider --timeout-method=thread -o faulthandler_timeout=0 "${tests[@]}" \
  2>&1 | tee "$dir/pytest.log"
status=${PIPESTATUS[0]}
set -e
echo "tests: exit $status after $(( $(date +%s) - start )) s; native tests: exit $native_status"
reports=("$dir"/reports/*)
if [ -e "${reports[0]}" ]; then
  echo "${#reports[@]} sanitizer report(s):"
  for r in "${reports[@]}"; do echo "== $r"; head -60 "$r"; done
  exit 1
fi
echo "no sanitizer reports"
[ "$status" -ne 0 ] && exit "$status"
exit "$native_status"
