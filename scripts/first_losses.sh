#!/usr/bin/env bash
# The first training losses of every family through the CLI, on a tiny shapes set: a
# refactor that must not change behaviour leaves them bit-identical (compare two runs' output).
#
#   scripts/first_losses.sh OUT_DIR > losses.txt      (UPGEN=path/to/upgen to pick the binary)
#
# Each line: family, then the loss of steps 1-4 (float32 as repr). About 2 minutes on 2 cores.
set -euo pipefail
W=${1:?usage: scripts/first_losses.sh OUT_DIR}
U=${UPGEN:-upgen}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
rm -rf "$W" && mkdir -p "$W"
"$U" data shapes --out "$W/shapes" --num-train 64 --num-val 16 --num-test 8 > /dev/null
"$U" tokenizer text --captions "$W/shapes" --vocab-size 80 --out "$W/text_tok" > /dev/null
STEPS=(--config.train.steps=4 --config.train.log_every=1 --config.train.progress=False
       --config.optim.warmup_steps=1 --config.train.eval_batches=1 --config.data.batch_size=4)
SMALL=(--config.model.num_layers=1 --config.model.emb_dim=32 --config.model.num_heads=2
       --config.model.mlp_dim=64)
"$U" train --config configs/vqgan.py:tiny --workdir "$W/vqgan" --config.data.dir="$W/shapes" \
  "${STEPS[@]}" --config.model.base_channels=8 --config.model.codebook_size=16 > "$W/vqgan.log" 2>&1
"$U" tokenize --source "$W/shapes" --out "$W/data" --text-tokenizer "$W/text_tok" \
  --image-tokenizer "$W/vqgan" --pixels > /dev/null 2>&1
for family in upgen dalle bart clip glide; do
  extra=("${SMALL[@]}")
  if [ "$family" = glide ]; then
    extra=(--config.model.model_channels=16 --config.model.num_res_blocks=1
           --config.model.text_layers=1 --config.model.text_width=32 --config.model.text_heads=2
           --config.model.num_head_channels=8 --config.model.norm_groups=4)
  fi
  "$U" train --config "configs/$family.py:tiny" --workdir "$W/$family" \
    --config.data.dir="$W/data" "${STEPS[@]}" "${extra[@]}" > "$W/$family.log" 2>&1 \
    || { echo "$family: failed, see $W/$family.log" >&2; exit 1; }
done
for family in vqgan upgen dalle bart clip glide; do
  python3 -c "
import json, sys
rows = [json.loads(line) for line in open(sys.argv[2])]
print(sys.argv[1], [repr(r['loss']) for r in rows if 'loss' in r and 'step' in r][:4])
" "$family" "$W/$family/metrics.jsonl"
done
