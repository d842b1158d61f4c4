#!/usr/bin/env bash
# Builds the C check of the row kernels (row_kernels_check.c, kernels.c) and runs it
# (issue 16): with the host compiler at each x86-64 level that setup.py builds, and
# cross-built for aarch64 and run under qemu-user.
#
# Usage: tests/c_kernels/run.sh [BUILD | GROUP]...        (default: all)
#   builds: x86-64-baseline x86-64-avx2 x86-64-avx512 (on an x86-64 host; elsewhere
#           "native", the compiler's default target), aarch64-armv8-a
#           aarch64-armv8.2-a+fp16
#   groups: native (the host's builds), aarch64 (both aarch64 builds), all
# Environment: CC (gcc), AARCH64_CC (aarch64-linux-gnu-gcc), QEMU_AARCH64 (qemu-aarch64),
#   AARCH64_SYSROOT (/usr/aarch64-linux-gnu), FASTSOFTMAX_C_DIR (the headers to check:
#   fastsoftmax/_cython of this tree), VERBOSE=1 (print every check's worst error).
# Exit status: 0 all passed (a level this CPU cannot run is skipped and says so),
#   1 a build or check failed, 77 the aarch64 tools are missing (the other builds still ran).
set -u

here=$(cd "$(dirname "$0")" && pwd)
headers=${FASTSOFTMAX_C_DIR:-$here/../../fastsoftmax/_cython}
cc=${CC:-gcc}
aarch64_cc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
qemu=${QEMU_AARCH64:-qemu-aarch64}
sysroot=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}

# setup.py's _compile_args with OpenMP: the code under test is built as the extension is
kernel_flags=(-O3 -funroll-loops -fopenmp-simd -fno-math-errno -fno-trapping-math -fopenmp)
# setup.py's X86_LEVELS
declare -A level_flags=(
    [x86-64-baseline]=""
    [x86-64-avx2]="-march=x86-64-v3"
    [x86-64-avx512]="-march=x86-64-v4 -mprefer-vector-width=512"
    [native]=""
    [aarch64-armv8-a]="-march=armv8-a"
    [aarch64-armv8.2-a+fp16]="-march=armv8.2-a+fp16"
)
if [ "$(uname -m)" = x86_64 ]; then
    native_builds=(x86-64-baseline x86-64-avx2 x86-64-avx512)
else
    native_builds=(native)
fi
aarch64_builds=(aarch64-armv8-a aarch64-armv8.2-a+fp16)

builds=()
for arg in "${@:-all}"; do
    case $arg in
        all) builds+=("${native_builds[@]}" "${aarch64_builds[@]}") ;;
        native) builds+=("${native_builds[@]}") ;;
        aarch64) builds+=("${aarch64_builds[@]}") ;;
        *)
            if [ -z "${level_flags[$arg]+set}" ]; then
                echo "run.sh: unknown build '$arg'" >&2
                exit 2
            fi
            builds+=("$arg") ;;
    esac
done

build_dir=$(mktemp -d)
trap 'rm -rf "$build_dir"' EXIT
# The check is mostly serial: idle OpenMP threads sleep rather than spin (a spinning
# worker took 80% of the native run's time).
export OMP_WAIT_POLICY=passive

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

failed=0
tools_missing=0
for build in "${builds[@]}"; do
    read -r -a flags <<< "${level_flags[$build]}"
    compiler=$cc
    runner=()
    if [[ $build == aarch64-* ]]; then
        compiler=$aarch64_cc
        runner=("$qemu" -L "$sysroot")
        missing=""
        command -v "$aarch64_cc" > /dev/null || missing="$aarch64_cc"
        command -v "$qemu" > /dev/null || missing="${missing:+$missing and }$qemu"
        if [ -n "$missing" ]; then
            echo "SKIP $build: $missing not found" \
                 "(Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)"
            tools_missing=1
            continue
        fi
    fi
    exe=$build_dir/check-$build
    log=$exe.build.log
    start=$(now)
    # kernels.c with setup.py's flags and the level's; the checks without them, for the
    # baseline target (they test the CPU's features before any kernel runs), at -O2: only
    # the kernels take the optimiser's time
    if ! { "$compiler" "${kernel_flags[@]}" "${flags[@]}" -Wall -Wextra -I"$headers" -I"$here" \
               -c "$here/kernels.c" -o "$exe.kernels.o" \
           && "$compiler" -O2 -Wall -Wextra -I"$here" \
               -c "$here/row_kernels_check.c" -o "$exe.check.o" \
           && "$compiler" -fopenmp "$exe.kernels.o" "$exe.check.o" -o "$exe" -lm
         } > "$log" 2>&1; then
        echo "FAIL $build: the build failed ($compiler ${kernel_flags[*]} ${flags[*]}):"
        cat "$log"
        failed=1
        continue
    fi
    if [ -s "$log" ]; then
        echo "warnings building $build:"
        cat "$log"
    fi
    built=$(now)
    "${runner[@]}" "$exe" > "$exe.out" 2> "$exe.err"
    status=$?
    finished=$(now)
    timing="build $(seconds "$start" "$built") s, run $(seconds "$built" "$finished") s"
    case $status in
        0)
            [ "${VERBOSE:-0}" = 1 ] && cat "$exe.out"
            target=$(head -n 1 "$exe.out" | sed 's/^row kernel check: //')
            echo "PASS $build: $target; $(tail -n 1 "$exe.out") ($timing)" ;;
        77)
            echo "SKIP $build: $(cat "$exe.out")" ;;
        *)
            echo "FAIL $build (exit status $status, $timing):"
            cat "$exe.err" "$exe.out"
            failed=1 ;;
    esac
done

if [ "$failed" = 1 ]; then exit 1; fi
if [ "$tools_missing" = 1 ]; then exit 77; fi
exit 0
