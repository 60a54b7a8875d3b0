#!/bin/bash
# Instructions per new graph (build + alloc + plan + lower) of tools/bench_graph.py, counted by
# callgrind with instrumentation on only around the repeats: robust under shared load, where
# wall and CPU times are not. Extra arguments go to bench_graph.py (e.g. --sched, --cache mixed).
#   tools/callgrind_graph.sh [-r REPEATS] [bench_graph args...]
# Valgrind has no AVX-512, so the kernels load for a fixed Haswell target from their own
# cache directory (the first run fills it: minutes; nothing is computed under valgrind).
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
reps=5
if [ "$1" = "-r" ]; then reps=$2; shift 2; fi
marks=$(mktemp -d)
export PYTHONPATH=$here NUMBA_CPU_NAME=haswell PYGGML_SIMD=avx2
export NUMBA_CPU_FEATURES=+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fsgsbase,+lzcnt,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-${PYGGML_CACHE_DIR:-$HOME/.cache/pyggml}/callgrind-haswell}
mkdir -p "$NUMBA_CACHE_DIR"
py=${PYTHON:-python}
"$py" "$here/tools/bench_graph.py" -r 1 --no-gc "$@" > /dev/null    # fill the kernel cache natively
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$marks/cg.out" \
    "$py" "$here/tools/bench_graph.py" -r "$reps" --no-gc --marks "$marks" "$@" \
    > "$marks/stdout" 2> "$marks/stderr" &
vg=$!
until grep -q READY "$marks/stdout" 2>/dev/null; do
    kill -0 $vg 2>/dev/null || { cat "$marks/stderr" >&2; exit 1; }; sleep 1
done
callgrind_control -i on $vg > /dev/null
touch "$marks/go"
until grep -q DONE "$marks/stdout"; do sleep 0.5; done
callgrind_control -i off $vg > /dev/null
touch "$marks/end"
wait $vg
total=$(awk '/^totals:/ {print $2}' "$marks/cg.out")
echo "$total instructions over $reps graphs: $((total / reps)) per graph ($marks/cg.out)"
