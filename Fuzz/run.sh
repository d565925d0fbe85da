#!/usr/bin/env bash
# Builds the libFuzzer targets and runs each for a bounded time.
#
#   Fuzz/run.sh [--time SECONDS] [--build-only] [TARGET...] [-- LIBFUZZER-ARGS...]
#
# TARGET is unix-address, endpoint, control-messages or frame-decoder (all by default).
# Each target is its entry file in Fuzz/Targets compiled against UDSKit built
# with -enable-testing, so it reaches internal symbols without a SwiftPM
# target that a normal `swift build` would have to skip.
# Exits non-zero as soon as a target finds a crash; the input is saved in
# .build-fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
build_only=false
targets=()
fuzzer_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) seconds="$2"; shift 2 ;;
        --build-only) build_only=true; shift ;;
        --) shift; fuzzer_args=("$@"); break ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(unix-address endpoint control-messages frame-decoder)

entry_file() {
    case "$1" in
        unix-address) echo UnixAddressFuzz.swift ;;
        endpoint) echo EndpointFuzz.swift ;;
        control-messages) echo ControlMessagesFuzz.swift ;;
        frame-decoder) echo FrameDecoderFuzz.swift ;;
        *) echo "unknown fuzz target: $1 (unix-address, endpoint, control-messages, frame-decoder)" >&2; exit 2 ;;
    esac
}
for target in "${targets[@]}"; do entry_file "$target" >/dev/null; done

scratch=.build-fuzz
out="$scratch/fuzz"
mkdir -p "$out/CUDSKit" "$scratch/artifacts"

# SystemPackage (and the CSystem module it imports) and swift-log's Logging
# as SwiftPM builds them; they need no instrumentation, since the fuzzers do
# not exercise them.
swift build --scratch-path "$scratch" --target SystemPackage >/dev/null
swift build --scratch-path "$scratch" --target Logging >/dev/null
debug="$scratch/debug"
csystem_map=$(find "$scratch/checkouts" -path '*Sources/CSystem/include/module.modulemap' | head -n 1)
system_objects=("$debug"/SystemPackage.build/*.o "$debug"/CSystem.build/*.o "$debug"/Logging.build/*.o)

# CUDSKit is instrumented: the control-message walk calls its CMSG_* shims.
cat >"$out/CUDSKit/module.modulemap" <<EOF
module CUDSKit {
    header "$PWD/Sources/CUDSKit/include/CUDSKit.h"
    export *
}
EOF
clang -c -O1 -g -fsanitize=fuzzer-no-link,address -ISources/CUDSKit/include \
    Sources/CUDSKit/shims.c -o "$out/CUDSKit/shims.o"

common=(-O -g -sanitize=fuzzer,address -parse-as-library -swift-version 6
    -I "$debug/Modules" -I "$out" -Xcc -fmodule-map-file="$csystem_map"
    -Xcc -fmodule-map-file="$out/CUDSKit/module.modulemap")

# One UDSKit for every target; rebuilt only when a source changed.
library_sources=$(find Sources/UDSKit -name '*.swift' | sort)
stamp="$out/UDSKit.sources"
if [ ! -f "$out/UDSKit.o" ] || [ -n "$(find Sources/UDSKit Sources/CUDSKit -newer "$out/UDSKit.o" | head -n 1)" ] \
    || ! diff -q <(echo "$library_sources") "$stamp" >/dev/null 2>&1; then
    echo "fuzz: building UDSKit"
    # shellcheck disable=SC2086 # one word per source path
    swiftc "${common[@]}" -module-name UDSKit -enable-testing -whole-module-optimization \
        -emit-module -emit-module-path "$out/UDSKit.swiftmodule" -c -o "$out/UDSKit.o" $library_sources
    echo "$library_sources" >"$stamp"
fi

for target in "${targets[@]}"; do
    echo "fuzz: building $target"
    swiftc "${common[@]}" -module-name Fuzz -use-ld=lld \
        Fuzz/Targets/Support.swift "Fuzz/Targets/$(entry_file "$target")" \
        "$out/UDSKit.o" "$out/CUDSKit/shims.o" "${system_objects[@]}" -o "$out/$target"
done
$build_only && exit 0

for target in "${targets[@]}"; do
    corpus="$scratch/corpus/$target"  # what the fuzzer finds; the seeds stay untouched
    mkdir -p "$corpus"
    dictionary=()
    [ -f "Fuzz/Dictionaries/$target.dict" ] && dictionary=(-dict="Fuzz/Dictionaries/$target.dict")
    echo "fuzz: running $target for ${seconds}s"
    started=$SECONDS
    if ! "$out/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$scratch/artifacts/$target-" "${dictionary[@]}" "${fuzzer_args[@]}" \
        "$corpus" "Fuzz/Corpus/$target" >"$out/$target.log" 2>&1; then
        tail -n 60 "$out/$target.log"
        echo "fuzz: $target FAILED; rerun the input with: $out/$target $scratch/artifacts/$target-*" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$target.log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $target held: $runs inputs in $((SECONDS - started))s, no crash"
done
