#!/usr/bin/env bash
# GPU check (issue 17): a ~0.5B and a ~1.3B config (random weights from configs, no downloads) trained for a few
# hundred steps with packing, bf16 and ZeRO-2 under papermill through `pangea sweep`, then evaluated; prints tokens/s,
# MFU, padding (from each run's train_log.jsonl) and peak GPU memory (nvidia-smi, sampled) beside `pangea model info`.
# Budget: <= 5 min on one GPU.
#
# On the GPU machine (its own PyTorch, transformers, peft; no package registry): unpack the bundle that
# `make gpu-bundle PY=3.12` wrote (dist/gpu-bundle: wheels of papermill & co, DeepSpeed's source, a wheel of this
# project), then   bash bench/gpu_check.sh   (BUNDLE=dist/gpu-bundle by default). It installs the bundle into a
# venv that sees the machine's own packages (--system-site-packages), never replacing one the machine already has.
#
# On CPU:   GPU_CHECK_DRY=1 bash bench/gpu_check.sh   runs the same path with this checkout's .venv, tiny sizes,
# a handful of steps, fp32 and ZeRO-2 on DeepSpeed's CPU accelerator: it checks the script, not the GPU figures.
#
# STATUS: this script has NOT run on a GPU yet (no GPU was available where it was written).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${GPU_CHECK_DRY:-0}
OUT=${GPU_CHECK_OUT:-${OUT:-/tmp}/gpu_check}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
rm -rf "$OUT"; mkdir -p "$OUT"
export PANGEA_HOME="$OUT/home"

if [ "$DRY" = 1 ]; then
  PY=${PY:-$ROOT/.venv/bin/python}; export PYTHONPATH=$ROOT DS_ACCELERATOR=cpu
  SIZES='[{hidden_size: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, intermediate_size: 256},
          {hidden_size: 96, n_layers: 2, n_heads: 4, n_kv_heads: 2, intermediate_size: 384}]'
  STEPS=6; BATCH=4; PREC=fp32; EVAL_N=4
else
  BUNDLE=${BUNDLE:-$ROOT/dist/gpu-bundle}
  [ -d "$BUNDLE/wheels" ] || { echo "gpu_check: no bundle at $BUNDLE (make gpu-bundle PY=3.12 on a machine with the package index)"; exit 2; }
  python3 -m venv --system-site-packages "$OUT/venv"; PY=$OUT/venv/bin/python
  # install only what the machine lacks: its own torch / transformers / peft / numpy ... stay as they are
  for w in "$BUNDLE"/wheels/*; do
    name=$(basename "$w" | sed -E 's/-[0-9].*//' | tr '_' '-' | tr 'A-Z' 'a-z')
    if ! "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null; then
      DS_BUILD_OPS=0 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation "$w"
    fi
  done
  "$PY" -m ipykernel install --user --name python3 >/dev/null
  SIZES='[{hidden_size: 1024, n_layers: 24, n_heads: 16, n_kv_heads: 2, intermediate_size: 5632, max_position: 4096},
          {hidden_size: 1536, n_layers: 28, n_heads: 12, n_kv_heads: 2, intermediate_size: 8960, max_position: 4096}]'
  STEPS=${GPU_CHECK_STEPS:-200}; BATCH=8; PREC=bf16; EVAL_N=20
fi
"$PY" -c "import pyarrow" 2>/dev/null || { echo "gpu_check: pyarrow is missing on this machine (it is not in the bundle: its wheel alone is 53 MiB); install it or add it to the bundle"; exit 2; }
"$PY" -c "import torch, transformers, papermill, deepspeed, pangea_nb; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| pangea_nb', pangea_nb.__file__)"
PANGEA=("$(dirname "$PY")/pangea")          # the console script of the venv that has pangea_nb

cat > "$OUT/sweep.yaml" <<YAML
name: gpu_check
template: $ROOT/nbs/sweeps/run.ipynb
out_dir: $OUT/runs
jobs: 1
base:
  PRESET: tiny
  LANGS: [sw, zh]
  N_SAMPLES: 2000
  STEPS: {stage0: 0, stage1: 0, stage2: $STEPS}
  BATCH: $BATCH
  EVAL_N: $EVAL_N
  EVAL_MODES: [loglik]
  OVERRIDES: {train: {packing: true, precision: $PREC, zero_stage: 2, lr: 0.0003, log_every: 10, report_to: []}}
grid:
  OVERRIDES.model: $SIZES
YAML

if command -v nvidia-smi >/dev/null && [ "$DRY" != 1 ]; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_mem.csv" & SMI=$!
fi
t0=$(date +%s)
"${PANGEA[@]}" sweep "$OUT/sweep.yaml" --quiet
echo "sweep wall: $(( $(date +%s) - t0 )) s"
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null || true

"$PY" - "$OUT" "$PREC" "$BATCH" <<'PY'
import json, statistics, sys, yaml
from pathlib import Path
from pangea_nb.config import RunConfig
from pangea_nb.model.build import model_info
out, prec, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
mem = Path(out/'gpu_mem.csv')
peak = max((int(l) for l in mem.read_text().split() if l.strip().isdigit()), default=None) if mem.exists() else None
print(f"peak GPU memory used (nvidia-smi, whole device, sampled every 0.5 s; includes the CUDA context and PyTorch's cache): "
      f"{f'{peak} MiB' if peak is not None else 'n/a (no nvidia-smi / CPU dry run)'}")
for run in sorted(r for r in (out/'runs').iterdir() if (r/'params.json').exists()):
    logs = sorted(run.rglob('train_log.jsonl'))
    if not logs: print(f'{run.name}: no train_log.jsonl (the run failed: see {run}/run.ipynb)'); continue
    rows = [r for r in (json.loads(l) for l in logs[-1].read_text().splitlines() if l.strip()) if r.get('phase', 'train') == 'train']
    med = lambda k: statistics.median(r[k] for r in rows if r.get(k) is not None)
    p = json.loads((run/'params.json').read_text())['params']
    mc = RunConfig.preset('tiny').model.replace(**p['OVERRIDES']['model'])
    tokens = batch * 512                   # a packed row of `batch` samples of <= 512 tokens: an upper bound
    info = model_info(mc, n_gpus=1, stage=2, precision=prec, tokens=tokens)
    res = sorted(run.rglob('*.results.json')) + sorted(run.rglob('metrics*.json'))
    zs = json.loads((run/'config.json').read_text()).get('train', {}).get('zero_stage') if (run/'config.json').exists() else None
    print(f"{run.name}: ZeRO-{zs},  {info['params']['total'] / 1e6:,.1f}M parameters; {len(rows)} log rows; tokens/s {med('tokens_per_s'):,.0f}; "
          f"MFU {med('mfu'):.1%}; padding {med('padding'):.2%}; loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}; "
          f"model info predicts {info['zero_memory'][2]['gpu_bytes'] / 2**20:,.0f} MiB model states at ZeRO-2 on 1 GPU, "
          f"{info['train_memory']['total'] / 2**20:,.0f} MiB for a ZeRO-0 step of {tokens} tokens; evaluation files: {[r.name for r in res][:3]}")
PY
