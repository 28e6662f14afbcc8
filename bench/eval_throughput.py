"""Multiple-choice evaluation throughput: batched option log-likelihood vs the same scoring one item at a time vs
one-at-a-time greedy generation (+ answer parsing), on the same model and the same XCOPA-layout items.

Goal (issue 5): batched log-likelihood >= 5x the samples/s of one-at-a-time generation.
Issue 16 rows (`--served`, on by default): the same generation and log-likelihood through `pangea serve`'s server
(uvicorn, in this process, loopback) and the served predictor (`eval.served`) vs in-process, with whether the
predictions agree, and the reply cache: a cold run vs a rerun answered from the cache. The batched and unbatched
log-likelihood runs must choose identical options (batch-size invariance). Ratios are measured in this process;
absolute CPU numbers are for tracking only.

    .venv/bin/python bench/eval_throughput.py [--items 48] [--batch-size 16] [--max-new-tokens 16] [--threads 1]

The log-likelihood path runs each prompt once per item (KV cache shared by its options) and the LM head only on the
option positions; batching mostly removes per-call overhead on CPU, so the ratios grow with the model on GPUs.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))


def write_items(root: Path, n: int):
    "An XCOPA release (official layout) with n test items per language in sw and zh."
    import random
    rng = random.Random(0)
    for lang in ('sw', 'zh'):
        p = root / 'data' / lang / f'test.{lang}.jsonl'; p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(''.join(json.dumps(dict(premise=f'Paka aliketi juu ya mkeka {"na " * rng.randint(2, 30)}. 猫坐在垫子上 {i}',
                                             choice1=f'The cat sat on the mat {"yes " * rng.randint(1, 6)}', choice2=f'false answer {i} no',
                                             question=rng.choice(['cause', 'effect']), label=rng.randint(0, 1), idx=i)) + '\n' for i in range(n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--items', type=int, default=48, help='items per language (2 languages)')
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--max-new-tokens', type=int, default=16, help='generation length of the one-at-a-time generation baseline')
    ap.add_argument('--hidden', type=int, default=256); ap.add_argument('--layers', type=int, default=4)
    ap.add_argument('--threads', type=int, default=1, help='torch threads (1: steadier on a shared 2-core machine)')
    ap.add_argument('--served', type=int, default=1, help='1: also the served-vs-in-process and reply-cache rows')
    ap.add_argument('--concurrency', type=int, default=8, help='served: requests in flight')
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from tiny_llava import build_tiny_llava
    from pangea_nb.eval.tasks import get_task, select_items, score_predictions
    from pangea_nb.model.infer import Predictor
    from pangea_nb.eval.infer import run_task
    from pangea_nb.contracts import read_jsonl
    torch.manual_seed(0)
    model_dir = Path(tempfile.mkdtemp(prefix='bench_llava_'))
    model, proc = build_tiny_llava(model_dir, hidden=a.hidden, layers=a.layers)
    pr = Predictor(model, proc)
    n_params = sum(p.numel() for p in model.parameters())
    task = get_task('xcopa')
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); write_items(d / 'xcopa', a.items)
        items = select_items(task, d / 'xcopa')
        run_task(task, items[:2], pr, d / 'warm.jsonl', mode='loglik', batch_size=2, progress=False)       # warm-up
        runs = {}
        for name, mode, bs in (('loglik batched', 'loglik', a.batch_size), ('loglik one-at-a-time', 'loglik', 1),
                               ('generate one-at-a-time', 'generate', 1)):
            out = d / f'{name.replace(" ", "_")}.jsonl'
            t0 = time.perf_counter()
            run_task(task, items, pr, out, mode=mode, batch_size=bs, max_new_tokens=a.max_new_tokens, progress=False)
            sec = time.perf_counter() - t0
            preds = read_jsonl(out)
            acc = score_predictions(task, items, {r['id']: r['prediction'] for r in preds})['summary']
            runs[name] = dict(seconds=sec, samples_per_s=len(items) / sec, preds=[r['prediction'] for r in preds], summary=acc)
    same = runs['loglik batched']['preds'] == runs['loglik one-at-a-time']['preds']
    print(f'model: tiny LLaVA ({n_params / 1e6:.2f} M params, hidden {a.hidden}, {a.layers} layers), torch threads {torch.get_num_threads()}; '
          f'{len(items)} XCOPA-layout items, 2 options each; batch size {a.batch_size}; generation {a.max_new_tokens} new tokens')
    for name, r in runs.items():
        print(f'  {name:<24} {r["samples_per_s"]:8.2f} samples/s  ({r["seconds"]:.2f} s; mul acc {r["summary"]["mul"]:.1f}, unparsed {r["summary"]["unparsed"]})')
    base = runs['generate one-at-a-time']['samples_per_s']
    r1 = runs['loglik batched']['samples_per_s'] / base
    r2 = runs['loglik batched']['samples_per_s'] / runs['loglik one-at-a-time']['samples_per_s']
    print(f'ratio batched loglik / one-at-a-time generation: {r1:.1f}x (goal >= 5x: {"met" if r1 >= 5 else "NOT met"})')
    print(f'ratio batched loglik / one-at-a-time loglik:     {r2:.1f}x')
    print(f'batched and one-at-a-time loglik choose identical options: {same}')
    agree = served_rows(a, task, items, pr, model_dir) if a.served else True
    return 0 if same and agree else 1


def served_rows(a, task, items, pr, model_dir):
    "Served vs in-process (generate and loglik, batched), and the reply cache's cold run vs rerun."
    from pangea_nb.backends.core import BackendConfig, ReplyCache, load_backend
    from pangea_nb.backends.serve import ChatServer
    from pangea_nb.eval.served import ServedPredictor, CachedPredictor, predict_items
    srv = ChatServer(load_backend(BackendConfig(kind='hf-llava', model=str(model_dir), batch_size=a.batch_size)), port=0,
                     batch_size=a.batch_size).start()
    try:
        sp = ServedPredictor(BackendConfig(kind='http', endpoints=[srv.url], concurrency=a.concurrency, timeout=600), tokenizer=str(model_dir))
        rows, agree = {}, True
        for mode in ('generate', 'loglik'):
            for name, p in ((f'{mode} in-process batched', pr), (f'{mode} served (concurrency {a.concurrency})', sp)):
                t0 = time.perf_counter(); preds = predict_items(task, items, p, mode, a.batch_size, a.max_new_tokens)
                rows[name] = (len(items) / (time.perf_counter() - t0), preds)
            local, served = [rows[k][1] for k in rows if k.startswith(mode)]
            agree &= local == served
            print(f'  {mode}: served / in-process = {list(rows.values())[-1][0] / list(rows.values())[-2][0]:.2f}x; identical predictions: {local == served}')
        for name, (sps, _) in rows.items(): print(f'  {name:<32} {sps:8.2f} samples/s')
        with tempfile.TemporaryDirectory() as c:
            cp = CachedPredictor(sp, sp.identity, ReplyCache(c))
            t0 = time.perf_counter(); predict_items(task, items, cp, 'generate', a.batch_size, a.max_new_tokens); cold = time.perf_counter() - t0
            t0 = time.perf_counter(); predict_items(task, items, cp, 'generate', a.batch_size, a.max_new_tokens); warm = time.perf_counter() - t0
            print(f'  reply cache, served generate: cold {cold:.2f} s, rerun {warm:.3f} s ({cold / warm:.0f}x; {cp.hits} hits, {cp.misses} misses)')
        return agree
    finally: srv.close()


if __name__ == '__main__':
    sys.exit(main())
