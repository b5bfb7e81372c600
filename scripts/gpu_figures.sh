#!/usr/bin/env bash
# gpu_figures.sh -- what the kernel issues ask of a GPU card, in five parts that each fit in
# one 10-minute call on a 16-core machine with one H100 or H200:
#
#   scripts/gpu_figures.sh validate      compute-sanitizer memcheck over the GPU tests (2 examples
#                                        each), beside the thorough Hypothesis profile:
#                                        3 seeds x 334 examples = 1,002 per property
#   scripts/gpu_figures.sh racecheck     compute-sanitizer racecheck over the same tests, alone
#                                        on the GPU (it is the slowest sanitizer: shared memory)
#   scripts/gpu_figures.sh bench         bench_kernels.py --no-flex, bench_prefill.py --quick,
#                                        bench_selection.py --quick, one after the other
#   scripts/gpu_figures.sh flex          bench_kernels.py against FlexAttention paged at 16- and
#                                        128-token pages, ours and SDPA in the same run
#   scripts/gpu_figures.sh third-party   the agreement tests against FlashInfer and FlexAttention
#
# Options: --tag TAG (default: today's date), --out DIR (default: $OUT when set, else
# benchmarks/results) and --commit REV (default: git's HEAD; give it where the tree was
# copied without an up-to-date git history, as on the project's device machine).
# Each log is DIR/<card>_<TAG>_<name>.log, e.g. h100_s13_memcheck.log, and starts with
# one line naming the date, the device, the commit and the command, so that a figure
# can always be traced to what produced it. The script asserts nothing about
# time; it prints each log's verdict lines at the end, and exits 1 if a check failed.
#
# FlashInfer is not a dependency: bench_kernels.py and bench_prefill.py print it beside ours
# when it is importable (docs/how-to/run-gpu-tests.md says how to install it).
set -u
cd "$(dirname "$0")/.."

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 2; }  # the comment above
[ $# -ge 1 ] || usage
part=$1; shift
tag=$(date +%Y%m%d)
commit=
out=${OUT:-benchmarks/results}
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage  # every option takes a value
    case $1 in
        --tag) tag=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --commit) commit=$2; shift 2 ;;
        *) usage ;;
    esac
done
case $part in validate|racecheck|bench|flex|third-party) ;; *) usage ;; esac

# Careless input: one line, exit status 2, before anything runs.
stop() { echo "gpu_figures.sh: $*" >&2; exit 2; }
[[ $tag =~ ^[A-Za-z0-9._-]+$ ]] || stop "--tag '$tag': use letters, digits, '.', '_' and '-' only (it is part of file names)"
mkdir -p "$out" 2>/dev/null && [ -d "$out" ] && [ -w "$out" ] || stop "--out $out: cannot write there"
command -v nvidia-smi >/dev/null || stop "no nvidia-smi here: this script needs a CUDA GPU"
device=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>&1) && [ -n "$device" ] \
    || stop "nvidia-smi found no GPU: ${device%%$'\n'*}"
card=$(echo "$device" | awk '{print tolower($2)}')   # "NVIDIA H100 80GB HBM3" -> h100
if [ -z "$commit" ]; then
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit with uncommitted changes"
fi
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/cupy-cache}
failed=0

# run NAME SECONDS COMMAND...: COMMAND's output into the log NAME, after the header line.
run() {
    local name=$1 limit=$2; shift 2
    local log="$out/${card}_${tag}_${name}.log" settings=""
    local var
    for var in HYPOTHESIS_PROFILE TS_GPU_MAX_EXAMPLES; do  # what the command's figures depend on
        [ -n "${!var:-}" ] && settings+="$var=${!var} "
    done
    {
        echo "# $(date +%F), $device, tree at $commit: $settings$*"
        timeout "$limit" "$@"
        echo "exit status $?"
    } > "$log" 2>&1
}

# The GPU tests of every kernel; the third-party ones have their own part.
TESTS=(tests/gpu tests/selection tests/control/test_decode_records.py -m gpu -k "not third_party" -p no:cacheprovider -q)

case $part in
validate)
    # All at once (they use different cores); pytest-xdist spreads each run over 3 workers,
    # which the sanitizer follows (on an H200: about 5 minutes in all).
    TS_GPU_MAX_EXAMPLES=2 run memcheck 560 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest "${TESTS[@]}" -n 3 &
    for seed in 1 2 3; do
        HYPOTHESIS_PROFILE=thorough TS_GPU_MAX_EXAMPLES=334 \
            run "thorough_seed$seed" 560 python3 -m pytest "${TESTS[@]}" -n 3 --hypothesis-seed=$seed &
    done
    wait
    logs=(memcheck thorough_seed1 thorough_seed2 thorough_seed3)
    ;;
racecheck)
    # Alone: racecheck watches every shared-memory access, and beside the other runs it did
    # not finish in one call (session 16). With 4 workers, alone: 5.5 minutes on an H200.
    TS_GPU_MAX_EXAMPLES=2 run racecheck 570 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest "${TESTS[@]}" -n 4
    logs=(racecheck)
    ;;
bench)
    # One after the other: each times the GPU alone. Their limits add up to 570 s, inside
    # one 10-minute call. On an H200 (session 18): bench_kernels about 150 s, bench_selection
    # under 20 s, and bench_prefill over 170 s since its twin checks run P V on tensor cores.
    run bench_kernels 230 python3 benchmarks/bench_kernels.py --no-flex
    run bench_prefill 280 python3 benchmarks/bench_prefill.py --quick
    run bench_selection 60 python3 benchmarks/bench_selection.py --quick
    logs=(bench_kernels bench_prefill bench_selection)
    ;;
flex)
    # FlexAttention compiles once per case and page size.
    run bench_kernels_flex 560 python3 benchmarks/bench_kernels.py --no-flashinfer --no-copy-kernels --rounds 2
    logs=(bench_kernels_flex)
    ;;
third-party)
    run third_party 570 python3 -m pytest tests/gpu/test_third_party_kernels.py -m gpu -v -p no:cacheprovider
    logs=(third_party)
    ;;
esac

for name in "${logs[@]}"; do
    log="$out/${card}_${tag}_${name}.log"
    echo "== $log"
    if grep -q "^summary" "$log"; then sed -n '/^summary/,$p' "$log"  # a benchmark's own summary
    else grep -E "ERROR SUMMARY|RACECHECK SUMMARY|[0-9]+ (passed|failed)|exit status" "$log" | tail -6; fi
    grep -E "^FAIL " "$log"
    status=$(tail -1 "$log" | sed -n 's/^exit status //p')
    [ "$status" = 0 ] || { echo "!! $name: exit status ${status:-unknown} (124: ran past its time limit)"; failed=1; }
done
exit $failed
