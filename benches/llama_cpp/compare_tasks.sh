#!/usr/bin/env bash
# Side-by-side task scoring speed of `quantfit eval --task` and `llama-perplexity
# --hellaswag / --winogrande` on the SmolLM2 fixture and the task files of tests/fixtures/tasks,
# same machine, same thread count, runs alternating. Tasks/s is tasks over the whole
# command's wall time (load, tokenization, scoring) for both; the accuracies are printed
# beside them. Needs llama.cpp's llama-perplexity (README, "Performance").
#
#   benches/llama_cpp/compare_tasks.sh LLAMA_CPP_BIN_DIR [THREADS] [TYPES] [TASKS] [ROUNDS]
set -euo pipefail
bin=${1:?usage: compare_tasks.sh LLAMA_CPP_BIN_DIR [THREADS] [TYPES] [TASKS] [ROUNDS]}
threads=${2:-2}
types=${3:-F32,Q8_0}
tasks=${4:-300}
rounds=${5:-2}
root=$(cd "$(dirname "$0")/../.." && pwd)
shared="$root/../shared"
fixtures="$root/tests/fixtures/tasks"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && cargo build --release --quiet)
quantfit="$root/target/release/quantfit"
. "$root/benches/llama_cpp/smollm2_folder.sh"
now() { date +%s.%N; }
for t in ${types//,/ }; do
  "$quantfit" quantize "$model" --type "$t" -o "$work/$t.gguf" > /dev/null
  for fmt in hellaswag winogrande; do
    file=$fixtures/$([ "$fmt" = hellaswag ] && echo hellaswag.txt || echo winogrande.csv)
    for r in $(seq "$rounds"); do
      a=$(now)
      "$bin/llama-perplexity" -m "$work/$t.gguf" -f "$file" --$fmt --$fmt-tasks "$tasks" \
        -t "$threads" > "$work/llama.log" 2>&1
      b=$(now)
      "$quantfit" eval "$work/$t.gguf" --task "$file" --task-limit "$tasks" -t "$threads" \
        --no-results --json > "$work/quantfit.json"
      c=$(now)
      python3 - "$work" "$t" "$fmt" "$r" "$a" "$b" "$c" <<'PY'
import json, re, sys
work, t, fmt, r, a, b, c = sys.argv[1:]
a, b, c = float(a), float(b), float(c)
log = open(f"{work}/llama.log").read()
rows = [l for l in log.splitlines() if re.match(r"^\d+\t", l)]
n = int(rows[-1].split("\t")[0])
acc = float(rows[-1].split("\t")[1].split()[0].rstrip("%"))
q = json.load(open(f"{work}/quantfit.json"))[0]
print(f"{t} {fmt} round {r}: quantfit {q['tasks'] / (c - b):.1f} tasks/s (acc {100 * q['acc']:.2f}, "
      f"{q['tasks']} tasks, scoring alone {q['tasks_per_s']:.1f}/s) | llama-perplexity "
      f"{n / (b - a):.1f} tasks/s (acc {acc:.2f}, {n} tasks)")
PY
    done
  done
done
