#!/usr/bin/env bash
# Side-by-side speed of quantfit and llama.cpp on the SmolLM2 fixture, same machine, same
# thread count, runs alternating so both see the same load:
#   - perplexity: `quantfit eval` vs `llama-perplexity` (-c 512 --chunks 20 -b 512), tokens/s
#     of the whole scoring loop (ctx x chunks / seconds), plus both PPL figures;
#   - speed: `quantfit bench` vs `llama-bench` (pp512, tg128, 5 repetitions).
# quantfit's own GGUFs feed both tools. Needs llama.cpp built with llama-perplexity and
# llama-bench (README, "Performance").
#
#   benches/llama_cpp/compare_eval.sh LLAMA_CPP_BIN_DIR [THREADS] [TYPES] [ROUNDS]
set -euo pipefail
bin=${1:?usage: compare_eval.sh LLAMA_CPP_BIN_DIR [THREADS] [TYPES] [ROUNDS]}
threads=${2:-2}
types=${3:-Q4_K_M,Q8_0}
rounds=${4:-2}
root=$(cd "$(dirname "$0")/../.." && pwd)
shared="$root/../shared"
text="$shared/corpora/pride-and-prejudice.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && cargo build --release --quiet)
quantfit="$root/target/release/quantfit"
. "$root/benches/llama_cpp/smollm2_folder.sh"
for t in ${types//,/ }; do
  "$quantfit" quantize "$model" --type "$t" -o "$work/$t.gguf" > /dev/null
  for r in $(seq "$rounds"); do
    # llama.cpp's log lines carry M.SS.mmm.uuu timestamps: the scoring loop runs from
    # "calculating perplexity" to "Final estimate", the span quantfit's eval_tokens_per_s covers.
    "$bin/llama-perplexity" -m "$work/$t.gguf" -f "$text" -c 512 --chunks 20 -b 512 \
      -t "$threads" > "$work/llama.log" 2>&1
    "$quantfit" eval "$work/$t.gguf" --text "$text" --ctx 512 --chunks 20 -t "$threads" \
      --no-results --json > "$work/quantfit.json"
    python3 - "$work" "$t" "$r" <<'PY'
import json, re, sys
work, t, r = sys.argv[1:]
log = open(f"{work}/llama.log").read()
def stamp(marker):
    line = next(l for l in log.splitlines() if marker in l)
    m, s, ms, us = line.split()[0].split(".")
    return int(m) * 60 + int(s) + int(ms) / 1e3 + int(us) / 1e6
loop = stamp("Final estimate") - stamp("calculating perplexity")
ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1)
q = json.load(open(f"{work}/quantfit.json"))[0]
print(f"{t} round {r}: quantfit eval {q['eval_tokens_per_s']:.1f} tok/s (PPL {q['ppl']:.4f}) | "
      f"llama-perplexity {20 * 512 / loop:.1f} tok/s (PPL {ppl})")
PY
  done
  "$bin/llama-bench" -m "$work/$t.gguf" -p 512 -n 128 -r 5 -t "$threads" 2>/dev/null | grep -E "pp512|tg128"
  "$quantfit" bench "$work/$t.gguf" --pp 512 --tg 128 --reps 5 -t "$threads" --no-results | grep -E "pp512|tg128"
done
