#!/usr/bin/env bash
# Side-by-side conversion time on the SmolLM2 fixture, runs alternating: quantfit from the
# Hugging Face folder straight to TYPE, against llama.cpp's two steps (convert_hf_to_gguf.py to
# F32, then llama-quantize F32 -> TYPE), each step timed on its own. Wall seconds, median and
# range over ROUNDS. Needs ../shared/tools/setup-llama-cpp.sh --converter (PEERS, /tmp/peers).
#
#   benches/llama_cpp/compare_convert.sh [THREADS] [TYPE] [ROUNDS]
set -euo pipefail
threads=${1:-2}
type=${2:-Q4_K_M}
rounds=${3:-5}
peers=${PEERS:-/tmp/peers}
src="$peers/src/llama_cpp_python-0.3.36/vendor/llama.cpp"
root=$(cd "$(dirname "$0")/../.." && pwd)
shared="$root/../shared"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && cargo build --release --quiet)
quantfit="$root/target/release/quantfit"
. "$root/benches/llama_cpp/smollm2_folder.sh"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); python3 -c "print(round($t1 - $t0, 3))"; }
q=(); c=(); l=()
for r in $(seq "$rounds"); do
  rm -f "$work"/*.gguf
  q+=("$(RAYON_NUM_THREADS=$threads secs "$quantfit" quantize "$model" --type "$type" -o "$work/q.gguf")")
  c+=("$(secs "$peers/conv/bin/python" "$src/convert_hf_to_gguf.py" "$model" --outtype f32 --outfile "$work/F32.gguf")")
  l+=("$(secs "$peers/llama/bin/llama-quantize" "$work/F32.gguf" "$work/l.gguf" "$type" "$threads")")
done
python3 - "${q[*]}" "${c[*]}" "${l[*]}" <<'PY'
import statistics, sys
for name, xs in zip(["quantfit quantize (folder -> TYPE)", "convert_hf_to_gguf.py (folder -> F32)",
                     "llama-quantize (F32 -> TYPE)"], sys.argv[1:]):
    v = [float(x) for x in xs.split()]
    print(f"{name}: median {statistics.median(v):.2f} s ({min(v):.2f}-{max(v):.2f}) over {len(v)} runs")
PY
