#!/usr/bin/env bash
# Side-by-side single-thread quantization speed: ggml's quantizer versus quantfit, on the same
# matrix, alternating runs so that both see the same machine load. Prints MB/s of f32 input
# and the ratio. Needs a built llama.cpp (see README, "Performance").
#
#   benches/ggml/compare.sh LLAMA_CPP_DIR [ROWS] [ROUNDS]
set -euo pipefail
llama=${1:?usage: compare.sh LLAMA_CPP_DIR [ROWS] [ROUNDS]}
rows=${2:-1024}
rounds=${3:-3}
cols=4096
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cc -O2 -I"$llama/ggml/include" "$here/quantize_speed.c" -o "$work/ggml_speed" \
   -L"$llama/build/bin" -lggml-base -lggml -Wl,-rpath,"$llama/build/bin"
(cd "$root" && cargo build --release --quiet)
quantfit="$root/target/release/quantfit"

python3 - "$work" "$rows" "$cols" <<'PY'
import random, struct, sys
work, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(1)
with open(f"{work}/m.f32", "wb") as f:
    f.write(struct.pack(f"<{rows*cols}f", *[random.gauss(0, 0.02) for _ in range(rows * cols)]))
with open(f"{work}/im.f32", "wb") as f:
    f.write(struct.pack(f"<{cols}f", *[0.5 + (i % 17) / 8 for i in range(cols)]))
PY

types=${TYPES:-Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ4_NL,IQ4_XS}
printf "%-8s %-8s %10s %10s %7s\n" type imatrix ggml quantfit ratio
for im in - "$work/im.f32"; do
  declare -A g=() q=()
  for round in $(seq "$rounds"); do
    while read -r t v; do [[ -z ${g[$t]:-} || ${v%.*} -gt ${g[$t]%.*} ]] && g[$t]=$v; done \
      < <("$work/ggml_speed" "$work/m.f32" $cols $types "$im" 3)
    args=(); [[ $im != - ]] && args=(--imatrix "$im")
    while read -r t v; do [[ -z ${q[$t]:-} || ${v%.*} -gt ${q[$t]%.*} ]] && q[$t]=$v; done \
      < <("$quantfit" quantize-raw "$work/m.f32" --cols $cols -t $types "${args[@]}" --single-thread --repeat 3 --json \
          | python3 -c 'import json,sys; [print(r["type"], round(r["mb_per_s"],1)) for r in json.load(sys.stdin)["results"]]')
  done
  for t in ${types//,/ }; do
    printf "%-8s %-8s %10s %10s %6.2fx\n" "$t" "$([[ $im == - ]] && echo no || echo yes)" "${g[$t]}" "${q[$t]}" \
      "$(python3 -c "print(${q[$t]}/${g[$t]})")"
  done
  unset g q
done
