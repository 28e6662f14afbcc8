"""Stage-2 training data from a 1M-record PangeaInstruct release: peak memory of building it through the on-disk pool index.

Goal (issue 15): building stage-2 data (`stage_data`, then the lengths the length-grouped sampler needs) from a
1M-record pool within 2 GB peak RSS. The pool is generated in a temporary folder in the PangeaInstruct layout
(`PangeaIns.json`, a JSON array; images under `general/COCO/train2017/`): 80% of the records name one of 256 small
shared JPEGs (each checked once: the checker caches verdicts by path, size and mtime), 20% are text-only; languages
use the release's codes. Each phase runs in a fresh process, so its peak RSS is its own:

- `first`: the index is built (the shared reader and checks, the `.json` copied to JSONL, offsets and metadata),
  the lengths measured with the tiny preset's tokenizer and cached, 1,000 random records read;
- `again`: the same config a second time (index and lengths read back), 1,000 random records read.

RSS before `stage_data` (Python, torch, transformers, the tokenizer) is printed beside the peak.

    .venv/bin/python bench/pool_index.py [--records 1000000]
"""
import argparse, io, json, os, random, resource, subprocess, sys, tempfile, time
from pathlib import Path

LANGS = ['english'] * 4 + ['zh_simplified', 'kr', 'vi', 'hi', 'ar', 'ru', 'ja', 'sw', 'fr', 'es']

def make_release(root: Path, n: int, n_images: int = 256, seed: int = 0) -> Path:
    "A PangeaInstruct-layout folder with `n` records, streamed to disk (the generator holds no record list)."
    from PIL import Image
    rng = random.Random(seed)
    img_dir = root/'general'/'COCO'/'train2017'; img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_images): Image.new('RGB', (24, 24), (i, 255 - i, 90)).save(img_dir/f'{i:012d}.jpg', 'JPEG')
    words = 'the a red blue cat dog house city river tree small large what where how many colour shows picture'.split()
    with open(root/'PangeaIns.json', 'w', encoding='utf-8') as f:
        f.write('[')
        for j in range(n):
            q = ' '.join(rng.choice(words) for _ in range(rng.randint(4, 30))) + '?'
            a = ' '.join(rng.choice(words) for _ in range(rng.randint(2, 80))) + '.'
            rec = {'id': f'r{j}', 'language': rng.choice(LANGS)}
            if rng.random() < 0.8:
                rec['image'] = f'general/COCO/train2017/{rng.randrange(n_images):012d}.jpg'; q = '<image>\n' + q
            rec['conversations'] = [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': a}]
            f.write((',' if j else '') + json.dumps(rec, ensure_ascii=False))
        f.write(']')
    return root

def phase(root: str, name: str) -> dict:
    "One fresh process: stage_data + lengths + 1,000 random reads; wall and CPU per step, peak RSS."
    sys.path.insert(0, str(Path(__file__).parent))
    from _mem import rss, peak_rss
    from pangea_nb.config import RunConfig
    from pangea_nb.model.build import build_processor, model_tokenizer
    from pangea_nb.model.collate import SampleEncoder
    from pangea_nb.train.loop import encoder_key
    from pangea_nb.train.stages import stage_data
    cfg = RunConfig.preset('tiny')
    cfg = cfg.replace(data=cfg.data.replace(pools=[{'id': 'pangeains', 'kind': 'pangeains', 'path': root}]))
    enc = SampleEncoder(build_processor(cfg.model, model_tokenizer(cfg.model)), 2048)
    base = rss()
    t0, c0 = time.perf_counter(), time.process_time()
    samples, images = stage_data(cfg)
    t1, c1 = time.perf_counter(), time.process_time()
    lengths = samples.lengths(enc.lengths, encoder_key(enc))
    t2, c2 = time.perf_counter(), time.process_time()
    rng = random.Random(1)
    got = [samples[rng.randrange(len(samples))] for _ in range(1000)]
    t3 = time.perf_counter()
    return {'phase': name, 'samples': len(samples), 'rejects': len(images.rejects), 'mean_length': round(float(lengths.mean()), 1),
            'stage_data_s': round(t1 - t0, 1), 'stage_data_cpu_s': round(c1 - c0, 1), 'lengths_s': round(t2 - t1, 1),
            'lengths_cpu_s': round(c2 - c1, 1), 'random_1000_reads_s': round(t3 - t2, 3), 'read_ok': all(s.id for s in got),
            'rss_before_gb': round(base / 2**30, 3), 'peak_rss_gb': round(peak_rss() / 2**30, 3)}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--records', type=int, default=1_000_000)
    ap.add_argument('--phase', default=''); ap.add_argument('--root', default='')
    a = ap.parse_args()
    if a.phase: print(json.dumps(phase(a.root, a.phase))); return
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); root = make_release(Path(d)/'PangeaInstruct', a.records)
        size = (root/'PangeaIns.json').stat().st_size
        print(f'generated {a.records:,} records ({size / 2**20:.0f} MiB PangeaIns.json) in {time.perf_counter() - t0:.0f} s', flush=True)
        env = {**os.environ, 'PANGEA_HOME': str(Path(d)/'home'), 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
        for name in ('first', 'again'):
            r = subprocess.run([sys.executable, __file__, '--phase', name, '--root', str(root)], env=env, capture_output=True, text=True)
            if r.returncode: print(r.stderr[-3000:]); sys.exit(r.returncode)
            print(r.stdout.strip().splitlines()[-1], flush=True)
        print(f'load average at the end: {os.getloadavg()[0]:.1f}')

if __name__ == '__main__': main()
