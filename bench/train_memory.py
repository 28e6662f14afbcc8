"""Measured training memory against `pangea model info`'s prediction.

For each model size (from configs, random weights, <= 0.3B parameters) a fresh process records its resident set size
(RSS) just before the model is built, builds it, runs real stage-2 training steps (AdamW, ZeRO-0 = plain PyTorch, fp32
on CPU, gradient clipping, the same `TorchEngine` the trainer uses) on a fixed batch of random text tokens, and
reports peak RSS minus that starting RSS (the worst rank's, with --nproc 2 and --zero 2|3: DeepSpeed over gloo under
torchrun, DeepSpeed's CPU accelerator). Beside it: `model_info(..., precision='fp32', zero_stage=Z, tokens=...,
targets=...)`, i.e. `pangea model info`'s fp32 accounting (`zero_memory_fp32`: model states term by term) plus the
activation estimate. Goal (issue 17): within 15%.

    .venv/bin/python bench/train_memory.py [--sizes 30m,120m] [--batch 2] [--seq 128] [--steps 2]
    .venv/bin/python bench/train_memory.py --zero 2 --nproc 2 --sizes 8m,30m,120m
    BENCH_SMOKE=1 .venv/bin/python bench/train_memory.py      # one small size, 2 steps: checks it runs

Results also go to bench/results/train_memory_z<ZERO>.json (git-ignored).
"""
import argparse, json, os, subprocess, sys
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('DS_ACCELERATOR', 'cpu'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).parent))

# LM sizes (the vision tower stays the tiny preset's, frozen in stage 2); vocabulary 32k as a real LM's would be
SIZES = {'8m':   dict(hidden_size=256, n_layers=4, n_heads=4, intermediate_size=1024),
         '30m':  dict(hidden_size=512, n_layers=6, n_heads=8, intermediate_size=1536),
         '120m': dict(hidden_size=768, n_layers=12, n_heads=12, intermediate_size=3072)}

# sizes whose 2026-12-02 runs fixed zero_memory_fp32's ZeRO-3 terms and its per-process `deepspeed` term (nbs/21_model):
# at ZeRO-2/3 a row of another size is out of sample
FITTED_ON = ('8m', '30m')

def _port():
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def model_cfg(size, vocab):
    from pangea_nb.config import ModelConfig
    return ModelConfig(**SIZES[size], vocab_size=vocab, tie_embeddings=False, max_position=2048)

def child(size, batch, seq, steps, vocab, zero=0):
    "Runs in a fresh process (one per rank under torchrun for ZeRO-2/3): prints one JSON line with the measured and predicted bytes."
    import torch
    from _mem import rss, peak_rss
    from pangea_nb.config import TrainConfig
    from pangea_nb.model.build import build_model_meta, model_info
    from pangea_nb.train.loop import set_trainable, TorchEngine
    torch.set_num_threads(int(os.environ.get('BENCH_THREADS', '2')))
    mc = model_cfg(size, vocab)
    ids = torch.randint(5, vocab, (batch, seq)); labels = ids.clone(); labels[:, : seq // 4] = -100   # prompt tokens unlabelled
    batch_d = {'input_ids': ids, 'labels': labels, 'attention_mask': torch.ones_like(ids)}
    n_targets = int((labels[:, 1:] != -100).sum())
    tc = TrainConfig(stage=2, lr=1e-4, precision='fp32', max_steps=steps, micro_batch_size=batch, zero_stage=zero)
    def steps_on(model, n):
        if zero:
            from pangea_nb.train.distributed import DeepSpeedEngine
            eng = DeepSpeedEngine(model, set_trainable(model, tc), tc, n)
        else: eng = TorchEngine(model, set_trainable(model, tc), tc, n)
        for _ in range(n):
            loss, k = eng.loss(batch_d); eng.backward(loss / k); eng.step()
    # warm-up: one step of a tiny model loads every library and kernel the real steps use, so the baseline RSS below
    # holds the process's code and allocator pools, and the difference is the model's training memory alone
    from pangea_nb.config import ModelConfig
    warm = build_model_meta(ModelConfig(vocab_size=vocab, max_position=2048)); steps_on(warm, 1); del warm
    import gc; gc.collect()
    base = rss()
    model = build_model_meta(mc)           # outside torch.device('meta'): real random fp32 weights
    after_build = rss()
    steps_on(model, steps)
    peak = peak_rss()
    world = int(os.environ.get('WORLD_SIZE', '1'))
    # `pangea model info --precision fp32 --n-gpus N --zero-stage Z --tokens ...`: the library's fp32 accounting
    info = model_info(mc, n_gpus=world, stage=2, precision='fp32', zero_stage=zero, tokens=batch * seq, targets=n_targets, batch=batch)
    info['train_memory']['terms'] = info['zero_memory'][zero].get('terms', {})
    print(json.dumps({'size': size, 'zero': zero, 'rank': int(os.environ.get('RANK', '0')), 'params': info['params']['total'], 'trainable': info['trainable'], 'weights_measured': after_build - base,
                      'measured': peak - base, 'predicted': info['train_memory']['total'], 'predicted_parts': info['train_memory']}))

def main():
    smoke = bool(os.environ.get('BENCH_SMOKE'))
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default='8m' if smoke else '30m,120m'); ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--seq', type=int, default=64 if smoke else 128); ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--vocab', type=int, default=32000); ap.add_argument('--child', default=None)
    ap.add_argument('--zero', type=int, default=0); ap.add_argument('--nproc', type=int, default=1)
    ap.add_argument('--out', default=None)           # default bench/results/train_memory_z<ZERO>.json: one file per stage
    a = ap.parse_args()
    a.out = a.out or str(Path(__file__).parent / 'results' / f'train_memory_z{a.zero}.json')
    if a.child: return child(a.child, a.batch, a.seq, a.steps, a.vocab, a.zero)
    if a.zero and a.nproc < 2: sys.exit('--zero 2|3 is measured with --nproc 2 or more (DeepSpeed over gloo, one process per rank)')
    rows = []
    print(f'ZeRO-{a.zero} in {a.nproc} process(es), fp32, AdamW, stage 2 (LM + projector trained, vision frozen), batch {a.batch} x {a.seq} tokens, {a.steps} steps, '
          f'one fresh process per size (shared machine: timings are not the point here, memory is)')
    print(f'{"size":>6} {"params":>12} {"predicted":>11} {"measured":>11} {"pred/meas":>9}   (model states + activations; MiB = 2^20 bytes)')
    for size in a.sizes.split(','):
        launch = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(a.nproc), '--master_port', str(_port())] if a.nproc > 1 else [sys.executable]
        r = subprocess.run(launch + [__file__, '--child', size, '--zero', str(a.zero), '--batch', str(a.batch), '--seq', str(a.seq), '--steps', str(a.steps),
                            '--vocab', str(a.vocab)], capture_output=True, text=True,
                           env={**os.environ, 'PYTHONWARNINGS': 'ignore', 'BENCH_THREADS': os.environ.get('BENCH_THREADS', str(max(1, 2 // a.nproc)))})
        if r.returncode: sys.exit(f'{size}: child failed:\n{r.stderr[-3000:]}')
        ranks = [json.loads(l) for l in r.stdout.splitlines() if l.startswith('{')]
        row = max(ranks, key=lambda x: x['measured']); row['ranks_measured'] = [x['measured'] for x in ranks]; rows.append(row)   # the worst rank
        parts = row['predicted_parts']
        terms = ', '.join(f'{k} {v / 2**20:.0f}' for k, v in parts['terms'].items())
        fit = ' [fitted on this size]' if a.zero and size in FITTED_ON else ' [out of sample]' if a.zero else ''
        print(f'{size:>6} {row["params"]:>12,} {row["predicted"] / 2**20:>9.0f} M {row["measured"] / 2**20:>9.0f} M {row["predicted"] / row["measured"]:>9.2f}'
              f'   (states {parts["states"] / 2**20:.0f} M = {terms}; activations {parts["activations"] / 2**20:.0f} M;'
              f' weights measured {row["weights_measured"] / 2**20:.0f} M; ranks measured '
              + ', '.join(f'{m / 2**20:.0f} M' for m in row['ranks_measured']) + f'){fit}', flush=True)
    worst = max(abs(r['predicted'] / r['measured'] - 1) for r in rows)
    print(f'memory model (model info, fp32 accounting): worst |predicted/measured - 1| = {worst:.1%} over {len(rows)} sizes (goal <= 15%)')
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps({'args': vars(a), 'rows': rows}, indent=1))

if __name__ == '__main__':
    main()
