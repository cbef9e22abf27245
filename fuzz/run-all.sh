#!/usr/bin/env bash
# Runs fuzz targets for MINUTES each (default 5), JOBS at a time (default 2), from the seeds
# tests/fuzz_smoke.rs writes, under the limits hostile input is held to (4 GiB, 60 s per
# input): `fuzz/run-all.sh [MINUTES] [JOBS] [TARGET...]` (default: all six). Prints, per target,
# the executions, the corpus it grew and whether it stopped on a crash (kept in
# fuzz/artifacts/<target>/, its log in fuzz/logs/). Needs nightly and cargo-fuzz. The targets
# are built once, first, and run as built, so editing the sources meanwhile changes nothing.
set -euo pipefail
cd "$(dirname "$0")"
minutes=${1:-5}
jobs=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors gguf imatrix sentencepiece tokenizer_json hardware_toml)
if [ ! -d ../target/fuzz-seeds/gguf ]; then
  (cd .. && cargo test --release --test fuzz_smoke)
fi
cargo +nightly fuzz build
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p logs
run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  if "$bin/$t" -artifact_prefix="artifacts/$t/" -max_total_time=$((minutes * 60)) \
      -rss_limit_mb=4096 -timeout=60 -max_len=1048576 -print_final_stats=1 \
      "corpus/$t" "../target/fuzz-seeds/$t" > "logs/$t.log" 2>&1; then
    status="no crash"
  else
    status="STOPPED: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
  fi
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: $execs executions in $minutes min, corpus $(ls "corpus/$t" | wc -l) files, $status"
}
for t in "${targets[@]}"; do
  run "$t" &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 5; done
done
wait
