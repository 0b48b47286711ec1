#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer on the stable toolchain (coverage instrumentation
# through stable `-C` flags, no sanitizer: see docs/fuzzing.md) and runs each for SECONDS
# (default 30) from its seed corpus in fuzz/corpus/<target>/, as many at once as there are
# cores (FUZZ_JOBS). Fails, printing the input, if any target crashes, panics, fails an
# assertion, hangs (10 s on one input) or uses more than 2 GiB.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-30}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz_targets/*.rs; do
    t="${f#fuzz_targets/}"
    targets+=("${t%.rs}")
  done
fi
jobs="${FUZZ_JOBS:-$(nproc)}"

# libfuzzer-sys compiles libFuzzer (C++) from source.
if ! command -v c++ >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
  fi
  command -v c++ >/dev/null || { echo "error: libFuzzer needs a C++ compiler (g++)" >&2; exit 1; }
fi

# What `cargo fuzz build --sanitizer none` passes: SanitizerCoverage (edge counters, the PC
# table, comparison operands for libFuzzer's value profile, stack depth), `cfg(fuzzing)`, and
# debug assertions (and so overflow checks). All stable flags. Given with an explicit
# --target, so build scripts and proc macros are built without them.
host="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TERM_COLOR=never

start=$(date +%s)
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
if ! cargo build --locked --release --target "$host" "${bins[@]}"; then
  echo "fuzz: the build failed. If Cargo says fuzz/Cargo.lock needs updating (a workspace" \
    "crate gained a dependency), run \`cargo fetch --manifest-path fuzz/Cargo.toml\` (it adds" \
    "what is missing and keeps every locked version) and commit fuzz/Cargo.lock." >&2
  exit 1
fi
built=$(date +%s)
echo "fuzz: built ${#targets[@]} targets in $((built - start)) s"

out="target/$host/release"

# Runs one target; on failure prints its log's end and each crashing input.
run_one() {
  local t="$1" work="target/corpus/$1" artifacts="target/artifacts/$1" log="target/$1.log"
  # New inputs go to a scratch corpus; the committed seeds are only read.
  rm -rf "$artifacts"
  mkdir -p "$work" "$artifacts"
  if "$out/$t" "$work" "corpus/$t" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz: $t ok: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log") runs in ${secs}s," \
      "$(ls "$work" | wc -l) inputs in its corpus"
    return 0
  fi
  {
    echo "fuzz: $t FAILED; the end of $log:"
    tail -n 60 "$log"
    for f in "$artifacts"/*; do
      [ -f "$f" ] || continue
      echo "fuzz: $t failed on fuzz/$f ($(wc -c <"$f") bytes); the input as base64:"
      base64 "$f"
      echo "fuzz: reproduce with fuzz/$out/$t fuzz/$f (after fuzz/run.sh has built it)"
    done
  } >&2
  return 1
}

failed=()
pids=()
names=()
reap() {
  if ! wait "${pids[0]}"; then failed+=("${names[0]}"); fi
  pids=("${pids[@]:1}")
  names=("${names[@]:1}")
}
for t in "${targets[@]}"; do
  [ -f "$out/$t" ] || { echo "error: no target $t" >&2; exit 1; }
  run_one "$t" &
  pids+=($!)
  names+=("$t")
  if [ "${#pids[@]}" -ge "$jobs" ]; then reap; fi
done
while [ "${#pids[@]}" -gt 0 ]; do reap; done

total=$(($(date +%s) - start))
echo "fuzz: ${secs}s each, $jobs at a time; build $((built - start)) s, total $total s"
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
