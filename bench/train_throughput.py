"""Training throughput against a fair anchor: the Hugging Face `Trainer` with length grouping.

LLaVA-NeXT and Pangea train with `group_by_modality_length=True`, a sampler that puts samples of similar length
(separately for text-only and image samples) into the same batch so that pad-to-longest pads little. The closest
stock equivalent is HF `Trainer`'s length-grouped sampler — `train_sampling_strategy='group_by_length'` in
transformers 5 (it was `group_by_length=True` in transformers 4; the installed version takes the former) — with the
same pad-to-longest collator. That is the anchor every ratio here is taken against. Rows:

    HF Trainer, length-grouped (anchor)   what LLaVA-NeXT's group_by_modality_length does, minus the modality split
    HF Trainer, random, pad-to-longest    second reference: the naive baseline (much padding)
    pangea_nb, length-grouped             our sampler; logits only at labelled positions
    pangea_nb, packing                    length-grouped micro-batches packed into one row (no padding)

Same model (tiny preset, random weights), data, optimizer (AdamW), schedule, per-device batch and number of steps in
every arm; each arm builds a fresh model from seed 0. Arms run in alternating order over >= 3 repetitions (forward,
backward, forward...) so that load on this shared machine falls on all arms alike; the ratio printed is the median
over repetitions of (pangea_nb packing tokens/s) / (anchor tokens/s) in the same repetition, with [min, max].
Tokens/s counts real (non-padding) tokens. Every arm encodes samples on the fly (HF's as LLaVA's lazy dataset does,
with the sampler given precomputed lengths as LLaVATrainer does); the baseline gets only samples that encode.

Memory per step: the peak resident set size during the arm's training steps above the RSS just before them (optimizer
states are created inside that window, so it is model-state growth + activations), and the mean token slots
(tokens + padding) per step, which is what activation memory scales with.

Data: the real PangeaIns sample (../shared/data/pangeains-sample, 270 long multi-turn conversations) mixed with short
synthetic-world samples. Goal (issue 17): >= 1.3x the anchor's tokens/s with packing, padding <= 1%.

    .venv/bin/python bench/train_throughput.py [--steps 200] [--reps 3] [--batch 4] [--max-length 512]
    BENCH_SMOKE=1 .venv/bin/python bench/train_throughput.py      # a few steps per arm, one repetition: checks it runs

Results also go to bench/results/train_throughput.json (git-ignored).
"""
import argparse, json, math, os, statistics, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('DS_ACCELERATOR', 'cpu'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).parent))
import torch
from _mem import RSSPeak

ARMS = {'hf_grouped': 'HF Trainer, length-grouped (anchor)', 'hf_random': 'HF Trainer, random, pad-to-longest',
        'ours_grouped': 'pangea_nb, length-grouped', 'ours_packed': 'pangea_nb, packing'}

def mix_data(n_synth, seed=0):
    "The real PangeaIns sample + synthetic-world samples, with one image loader for both."
    from pangea_nb.config import RunConfig, shared_path
    from pangea_nb.train.stages import stage_data
    root = shared_path('data/pangeains-sample')
    if root is None: sys.exit('skipped: ../shared/data/pangeains-sample is not beside this checkout (the benchmark needs the real sample)')
    cfg = RunConfig.preset('tiny')
    cfg = cfg.replace(data=cfg.data.replace(n_samples=n_synth, english_ratio=None, seed=seed, pools=[
        {'kind': 'pangeains', 'id': 'pangeains', 'path': str(root/'sample_data.json')}, {'kind': 'synth'}]))
    return cfg, *stage_data(cfg)

class Lazy(torch.utils.data.Dataset):
    "LLaVA's LazySupervisedDataset in miniature: a sample is encoded when the loader asks for it (as in pangea_nb's loop)."
    def __init__(self, enc, samples): self.enc, self.samples = enc, samples
    def __len__(self): return len(self.samples)
    def __getitem__(self, i): return self.enc(self.samples[i])

def encodable(proc, samples, images, tc):
    "(encoder, the samples that encode, their lengths): the baseline has no skip logic, so it gets only good samples."
    from pangea_nb.model.collate import SampleEncoder
    from pangea_nb.data.schema import RecordError
    enc = SampleEncoder(proc, tc.max_length, tc.overlong, images); good = []
    for s in samples:
        try: enc(s); good.append(s)
        except (RecordError, ValueError): pass
    return enc, good, enc.lengths(good)

def hf_arm(model, proc, data, tc, steps, out, strategy):
    "HF Trainer with pad-to-longest and `strategy` sampling; returns (real tokens/s, padding, seconds, slots per step)."
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler
    enc, good, lengths = data
    class LLaVATrainer(Trainer):
        "As LLaVA(-NeXT)'s LLaVATrainer: the length-grouped sampler gets the lengths the dataset knows, not a pass over it."
        def _get_train_sampler(self, ds=None):
            if strategy != 'group_by_length': return super()._get_train_sampler(ds)
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths)
    from pangea_nb.model.collate import collate
    seen = {'tokens': 0, 'slots': 0, 'batches': 0}
    def pad_to_longest(exs):
        b = collate(exs, proc.tokenizer.pad_token_id)
        seen['tokens'] += b['stats']['tokens']; seen['slots'] += b['stats']['slots']; seen['batches'] += 1
        return {k: b[k] for k in ('input_ids', 'labels', 'attention_mask', 'pixel_values') if k in b}
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=tc.micro_batch_size, max_steps=steps,
                             learning_rate=tc.lr, lr_scheduler_type='cosine', warmup_steps=math.ceil(tc.warmup_ratio * steps), weight_decay=0.0,
                             optim='adamw_torch', max_grad_norm=tc.clip_grad, train_sampling_strategy=strategy, report_to=[],
                             save_strategy='no', logging_steps=10**9, use_cpu=True, dataloader_num_workers=0,
                             remove_unused_columns=False, seed=0, disable_tqdm=True)
    tr = LLaVATrainer(model=model, args=args, train_dataset=Lazy(enc, good), data_collator=pad_to_longest)
    res = tr.train()
    secs = res.metrics['train_runtime']
    return seen['tokens'] / secs, 1 - seen['tokens'] / seen['slots'], secs, seen['slots'] / max(seen['batches'], 1)

def ours_arm(model, proc, samples, images, cfg, steps, out, packing):
    "pangea_nb's Trainer; returns (real tokens/s, padding, seconds of training steps, slots per step)."
    from pangea_nb.train.loop import Trainer
    cfg = cfg.replace(train=cfg.train.replace(max_steps=steps, log_every=max(steps, 1), packing=packing, group_by_length=True,
                                              report_to=[]))
    t = Trainer(cfg, model, proc, samples, images=images, out_dir=out)
    t.fit(progress=False)
    st = json.loads((Path(out)/'done.json').read_text())
    return st['tokens'] / st['elapsed'], 1 - st['tokens'] / st['slots'], st['elapsed'], st['slots'] / steps

def run_arm(arm, cfg, tok, proc, samples, images, data, steps, out):
    from pangea_nb.model.build import build_model
    torch.manual_seed(0); model = build_model(cfg.model, tok)
    with RSSPeak() as mem:
        if arm.startswith('hf'): r = hf_arm(model, proc, data, cfg.train, steps, out, 'group_by_length' if arm == 'hf_grouped' else 'random')
        else: r = ours_arm(model, proc, samples, images, cfg, steps, out, arm == 'ours_packed')
    del model
    return dict(zip(('tokens_per_s', 'padding', 'seconds', 'slots_per_step'), r), peak_rss_delta=mem.delta)

def matmul_peak(n=1024, reps=20):
    "Measured fp32 matmul FLOP/s on this machine with the current thread count (the MFU denominator)."
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b
    t = time.perf_counter()
    for _ in range(reps): a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)

def mfu_small(proc_samples, images, steps):
    "Model FLOP/s of the small preset's training steps (FLOPs counted by torch) over the measured matmul FLOP/s."
    from torch.utils.flop_counter import FlopCounterMode
    from pangea_nb.config import ModelConfig, TrainConfig
    from pangea_nb.model.build import build_model, build_processor, model_tokenizer
    from pangea_nb.model.collate import SampleEncoder, collate
    from pangea_nb.train.loop import set_trainable, TorchEngine
    mc = ModelConfig.preset('small')
    tok = model_tokenizer(mc); model = build_model(mc, tok); proc = build_processor(mc, tok)
    groups = set_trainable(model, TrainConfig.preset('stage2'))
    eng = TorchEngine(model, groups, TrainConfig.preset('stage2'), steps)
    enc = SampleEncoder(proc, 2048, images=images)
    batches = [collate([enc(s) for s in proc_samples[i * 8:(i + 1) * 8]], tok.pad_token_id) for i in range(steps + 1)]
    with FlopCounterMode(display=False) as fc:
        loss, n = eng.loss(batches[0]); eng.backward(loss / n)
    flops_per_token = fc.get_total_flops() / batches[0]['stats']['tokens']
    eng.step()
    t, tokens = time.perf_counter(), 0
    for b in batches[1:]:
        loss, n = eng.loss(b); eng.backward(loss / n); eng.step(); tokens += b['stats']['tokens']
    secs = time.perf_counter() - t
    return flops_per_token * tokens / secs, sum(p.numel() for p in model.parameters()), tokens / secs

def spread(xs): return statistics.median(xs), min(xs), max(xs)

def main():
    smoke = bool(os.environ.get('BENCH_SMOKE'))
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=4 if smoke else 200); ap.add_argument('--reps', type=int, default=1 if smoke else 3)
    ap.add_argument('--batch', type=int, default=4); ap.add_argument('--synth', type=int, default=60 if smoke else 730)
    ap.add_argument('--max-length', type=int, default=512); ap.add_argument('--mfu-steps', type=int, default=0 if smoke else 4)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'train_throughput.json'))
    a = ap.parse_args()
    if not smoke and (a.steps < 200 or a.reps < 3): print(f'note: {a.steps} steps x {a.reps} repetitions is below the issue\'s 200 x 3', flush=True)
    from pangea_nb.model.build import build_processor, model_tokenizer
    cfg, samples, images = mix_data(a.synth)
    cfg = cfg.replace(train=cfg.train.replace(micro_batch_size=a.batch, lr=1e-4, max_length=a.max_length, threads=None))
    tok = model_tokenizer(cfg.model); proc = build_processor(cfg.model, tok)
    data = encodable(proc, samples, images, cfg.train)
    print(f'data: {len(samples)} samples ({sum(s.source == "pangeains" for s in samples)} real PangeaIns + '
          f'{sum(s.source == "synth" for s in samples)} synthetic, {len(data[1])} encode); tiny preset; per-device batch {a.batch}; max length {a.max_length}; '
          f'{a.steps} steps per arm x {a.reps} repetitions; {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} '
          f'(shared machine: other developers\' jobs run at the same time)', flush=True)
    rows = {k: [] for k in ARMS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for rep in range(a.reps):
            order = list(ARMS) if rep % 2 == 0 else list(ARMS)[::-1]
            for arm in order:
                r = run_arm(arm, cfg, tok, proc, samples, images, data, a.steps, Path(d) / f'{arm}-{rep}')
                r['load'] = os.getloadavg()[0]; rows[arm].append(r)
                Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps({'args': vars(a), 'partial': rows}, indent=1))
                print(f'  rep {rep} {ARMS[arm]:38s}: {r["tokens_per_s"]:8.0f} tokens/s, padding {r["padding"]:6.1%}, {r["seconds"]:6.1f} s, '
                      f'peak RSS +{r["peak_rss_delta"] / 2**20:6.0f} MiB, {r["slots_per_step"]:6.0f} slots/step, load {r["load"]:.1f}', flush=True)
    print(f'wall {time.perf_counter() - t0:.0f} s')
    med = lambda arm, k: statistics.median(r[k] for r in rows[arm])
    for arm, name in ARMS.items():
        print(f'{name:38s}: {med(arm, "tokens_per_s"):8.0f} tokens/s (median), padding {med(arm, "padding"):6.1%}, '
              f'memory per step: peak RSS +{med(arm, "peak_rss_delta") / 2**20:.0f} MiB, {med(arm, "slots_per_step"):.0f} token slots')
    ratio = lambda arm, base: [x['tokens_per_s'] / y['tokens_per_s'] for x, y in zip(rows[arm], rows[base])]
    n = a.reps
    for arm, label in (('ours_grouped', 'pangea_nb length-grouped'), ('hf_random', 'HF random pad-to-longest')):
        m, lo, hi = spread(ratio(arm, 'hf_grouped'))
        print(f'  {label} vs anchor: {m:.2f}x median [{lo:.2f}, {hi:.2f}]')
    m, lo, hi = spread(ratio('ours_packed', 'hf_grouped'))
    print(f'ratio vs length-grouped HF Trainer: {m:.2f}x median [{lo:.2f}, {hi:.2f}] over {n} repetitions '
          f'(pangea_nb packing; goal >= 1.3x; its padding {med("ours_packed", "padding"):.1%}, goal <= 1%)', flush=True)
    result = {'args': vars(a), 'smoke': smoke, 'rows': rows, 'ratio_packed_vs_anchor': {'median': m, 'min': lo, 'max': hi, 'reps': n}}
    if a.mfu_steps:
        peak = matmul_peak()
        achieved, n_params, tps = mfu_small(samples, images, a.mfu_steps)
        print(f'small preset ({n_params / 1e6:.1f}M parameters): {tps:.0f} tokens/s, {achieved / 1e9:.2f} GFLOP/s achieved '
              f'(FLOPs counted by torch.utils.flop_counter), fp32 matmul peak {peak / 1e9:.1f} GFLOP/s -> CPU MFU {achieved / peak:.1%}')
        result['mfu_small'] = {'achieved': achieved, 'peak': peak, 'params': n_params, 'tokens_per_s': tps}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(result, indent=1))

if __name__ == '__main__':
    main()
