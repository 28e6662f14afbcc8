"""Measured training memory against `pangea model info`'s prediction.

For each model size (from configs, random weights, <= 0.3B parameters) a fresh process records its resident set size
(RSS) just before the model is built, builds it, runs real stage-2 training steps (AdamW, ZeRO-0 = plain PyTorch, fp32
on CPU, gradient clipping, the same `TorchEngine` the trainer uses) on a fixed batch of random text tokens, and
reports peak RSS minus that starting RSS. Beside it: `model_info(..., precision='fp32', tokens=..., targets=...)`,
i.e. model states (weights + gradients + Adam moments) plus the activation estimate. Goal (issue 17): within 15%.

    .venv/bin/python bench/train_memory.py [--sizes 30m,120m] [--batch 2] [--seq 128] [--steps 2]
    BENCH_SMOKE=1 .venv/bin/python bench/train_memory.py      # one small size, 2 steps: checks it runs

Results also go to bench/results/train_memory.json (git-ignored).
"""
import argparse, json, os, subprocess, sys
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('DS_ACCELERATOR', 'cpu'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).parent))

# LM sizes (the vision tower stays the tiny preset's, frozen in stage 2); vocabulary 32k as a real LM's would be
SIZES = {'8m':   dict(hidden_size=256, n_layers=4, n_heads=4, intermediate_size=1024),
         '30m':  dict(hidden_size=512, n_layers=6, n_heads=8, intermediate_size=1536),
         '120m': dict(hidden_size=768, n_layers=12, n_heads=12, intermediate_size=3072)}

def fp32_zero_states(total, trainable, zero, n, bucket=int(5e8)):
    """Model-state bytes per rank of an fp32 DeepSpeed run on CPU, as measured here (issue 17), where `model info`'s
    mixed-precision line (2 bytes of weights + 18 per trainable / N, DeepSpeed's estimator) does not apply: fp32
    weights (4 per parameter, whole on every rank at ZeRO-2); the contiguous-gradient reduce bucket, min(bucket,
    trainable) fp32 elements (the whole gradient at these sizes); per trainable / N: an fp32 master partition (4),
    its gradient (4), Adam's two moments (8). ZeRO-3 adds the partitioned fp32 parameters (4 / N) and, because the
    model is built whole before DeepSpeed partitions it (no zero.Init) and at these sizes every parameter stays
    gathered (stage3_max_live_parameters 1e9), the whole weights twice."""
    T = trainable
    if zero == 2: return 4 * total + 4 * min(bucket, T) + 16 * T / n
    if zero == 3: return 8 * total + 4 * min(bucket, T) + 20 * T / n
    raise ValueError(zero)

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
    info = model_info(mc, n_gpus=world, stage=2, precision='fp32', tokens=batch * seq, targets=n_targets, batch=batch)
    if zero:      # `pangea model info --n-gpus N`'s ZeRO line (mixed-precision accounting) plus the activation estimate
        info['train_memory'] = {'states': info['zero_memory'][zero]['gpu_bytes'], 'activations': info['train_memory']['activations']}
        info['train_memory']['total'] = sum(info['train_memory'].values())
        info['train_memory']['fp32_accounting'] = int(fp32_zero_states(info['params']['total'], info['trainable'], zero, world)
                                                      + info['train_memory']['activations'])
    print(json.dumps({'size': size, 'zero': zero, 'rank': int(os.environ.get('RANK', '0')), 'params': info['params']['total'], 'trainable': info['trainable'], 'weights_measured': after_build - base,
                      'measured': peak - base, 'predicted': info['train_memory']['total'], 'predicted_parts': info['train_memory']}))

def main():
    smoke = bool(os.environ.get('BENCH_SMOKE'))
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default='8m' if smoke else '30m,120m'); ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--seq', type=int, default=64 if smoke else 128); ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--vocab', type=int, default=32000); ap.add_argument('--child', default=None)
    ap.add_argument('--zero', type=int, default=0); ap.add_argument('--nproc', type=int, default=1)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'train_memory.json'))
    a = ap.parse_args()
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
        print(f'{size:>6} {row["params"]:>12,} {row["predicted"] / 2**20:>9.0f} M {row["measured"] / 2**20:>9.0f} M {row["predicted"] / row["measured"]:>9.2f}'
              f'   (states {row["predicted_parts"]["states"] / 2**20:.0f} M, activations {row["predicted_parts"]["activations"] / 2**20:.0f} M;'
              f' weights measured {row["weights_measured"] / 2**20:.0f} M)', flush=True)
        if a.zero:
            f = row['predicted_parts']['fp32_accounting']
            print(f'{"":>6} {"":>12} {f / 2**20:>9.0f} M {"":>11} {f / row["measured"]:>9.2f}   (fp32 CPU accounting, fp32_zero_states; ranks measured '
                  + ', '.join(f'{m / 2**20:.0f} M' for m in row['ranks_measured']) + ')', flush=True)
    worst = max(abs(r['predicted'] / r['measured'] - 1) for r in rows)
    print(f'memory model: worst |predicted/measured - 1| = {worst:.1%} over {len(rows)} sizes (goal <= 15%)')
    if a.zero:
        worst = max(abs(r['predicted_parts']['fp32_accounting'] / r['measured'] - 1) for r in rows)
        print(f'fp32 CPU accounting: worst |predicted/measured - 1| = {worst:.1%} over {len(rows)} sizes (goal <= 15%)')
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps({'args': vars(a), 'rows': rows}, indent=1))

if __name__ == '__main__':
    main()
