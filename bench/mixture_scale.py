"""Mixture builder at PangeaIns scale: 6M metadata rows over Pangea's 39 languages, manifests of N = 1M, 3M, 6M.

Goal (issue 3): at N = 6M, <= 60 s wall time and <= 2 GB peak RSS on this machine.
Each N runs in a fresh process, so its peak RSS is its own. With the data checks of issue 18 on, a pool's scan (the
one record reader and checker, image headers and path safety, duplicate ids) is timed on `--scan-rows` PangeaIns-like
JSONL records, each with its own JPEG, and extrapolated to 6M rows: first scan, and a rescan whose image verdicts come
from the (path, size, mtime) cache. The metadata is generated once (timed separately) and
loaded by every run. Baseline, in the same process as the N=1M run: the obvious pandas implementation
(`groupby(['lang', 'source']).sample(n=...)`), printed as a ratio.

    .venv/bin/python bench/mixture_scale.py [--rows 6000000] [--sizes 1000000,3000000,6000000]
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

def make_meta(n_rows: int, path: Path, seed: int = 0):
    "PangeaIns-like metadata: 40% English originals, the rest translations and native data over 38 languages."
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    from pangea_nb.languages import PANGEA_LANGS
    rng = np.random.default_rng(seed)
    langs = ['en'] + [l for l in PANGEA_LANGS if l != 'en']
    w = np.r_[0.4 * 38 / 0.6, 1 / np.arange(1, 39) ** 0.8]            # English 40%, a Zipf-like tail over 38 languages
    lang = rng.choice(len(langs), n_rows, p=w / w.sum()).astype(np.int8)
    sources = ['general', 'doc_chart', 'caption', 'cultural', 'text_only']
    src = rng.choice(5, n_rows, p=[0.57, 0.06, 0.02, 0.25, 0.10]).astype(np.int8)
    tasks = ['vqa', 'mcq', 'caption', 'ocr', 'chat', 'text', 'reasoning']
    task = rng.integers(0, 7, n_rows).astype(np.int8)
    n_en = int((lang == 0).sum())
    group = np.arange(n_rows, dtype=np.int64)                          # every row its own item ...
    nonen = np.nonzero(lang != 0)[0]
    half = nonen[: len(nonen) // 2]                                    # ... except that half the non-English rows are
    group[half] = np.nonzero(lang == 0)[0][rng.integers(0, n_en, len(half))]   # translations of English rows
    d = lambda codes, labels: pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(labels))
    tab = pa.table({'row': pa.array(np.arange(n_rows)), 'lang': d(lang, langs), 'source': d(src, sources), 'task': d(task, tasks),
                    'tokens': pa.array(rng.integers(50, 2000, n_rows).astype(np.int32)),
                    'images': pa.array((src != 4).astype(np.int16)), 'group': pa.array(group),
                    'pool': d((src % 3).astype(np.int8), ['pangeains', 'cultural', 'text'])})
    pq.write_table(tab, path)
    return tab

def run_one(meta_path: str, n: int, allow_parallel: bool, baseline: bool) -> dict:
    "Build one manifest (select + take + Parquet write); report wall time and this process's peak RSS."
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    from pangea_nb.config import DataConfig
    from pangea_nb.data.mixture import select
    from pangea_nb.languages import normalise_lang
    normalise_lang('en')   # load the language registry (a fixed cost, not part of the scaling)
    t0 = time.perf_counter(); meta = pq.read_table(meta_path); t_load = time.perf_counter() - t0
    cfg = DataConfig(n_samples=n, english_ratio=0.4, lang_proportions='temperature', temperature=2.0,
                     source_quotas={'cultural': 0.25}, small_pool='repeat', allow_parallel=allow_parallel, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    pos, passes, stats = select(meta, cfg)
    c_select = time.process_time() - c0
    man = meta.take(pa.array(pos)).append_column('pass', pa.array(passes))
    with tempfile.TemporaryDirectory() as d: pq.write_table(man, Path(d)/'manifest.parquet')
    t_build, c_build = time.perf_counter() - t0, time.process_time() - c0
    en = int(np.sum(man['lang'].combine_chunks().indices.to_numpy() == man['lang'].combine_chunks().dictionary.to_pylist().index('en')))
    out = {'n': n, 'allow_parallel': allow_parallel, 'load_s': round(t_load, 2), 'build_s': round(t_build, 2),
           'build_cpu_s': round(c_build, 2), 'select_cpu_s': round(c_select, 2), 'rows': man.num_rows,
           'english_share': round(en / man.num_rows, 4), 'repeated': int((passes > 0).sum()),
           'peak_rss_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if baseline:   # the obvious pandas version of the same per-cell sampling (no exact English ratio, no quotas)
        import pandas as pd
        df = meta.select(['lang', 'source']).to_pandas()
        need = (df.groupby(['lang', 'source'], observed=True).size() * n / len(df)).round().astype(int)
        t0, c0 = time.perf_counter(), time.process_time()
        parts = [g.sample(n=need[k], replace=need[k] > len(g), random_state=0) for k, g in df.groupby(['lang', 'source'], observed=True)]
        pd.concat(parts).sample(frac=1, random_state=0)
        out['pandas_baseline_s'], out['pandas_baseline_cpu_s'] = round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)
    return out

def scan_bench(n: int) -> dict:
    "Seconds per record of a JsonPool scan with checks on: text-only records, records with images (headers), cached rescan."
    import io
    from PIL import Image
    from pangea_nb.data.pools import JsonPool
    b = io.BytesIO(); Image.new('RGB', (32, 24), (30, 90, 160)).save(b, 'JPEG'); jpg = b.getvalue()
    conv = lambda i: [{'from': 'human', 'value': f'<image>\nWhat is shown in picture {i}?'}, {'from': 'gpt', 'value': f'A blue square, number {i}.'}]
    out = {'rows': n}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for k in range(0, n, 1000): (d/'images'/f'{k // 1000:04d}').mkdir(parents=True)
        t0 = time.perf_counter()
        for i in range(n): (d/'images'/f'{i // 1000:04d}'/f'{i}.jpg').write_bytes(jpg)
        out['write_images_s'] = round(time.perf_counter() - t0, 2)
        with open(d/'text.jsonl', 'w') as f:
            for i in range(n): f.write(json.dumps({'id': f't{i}', 'language': 'sw', 'conversations': [
                {'from': 'human', 'value': f'Question {i}?'}, {'from': 'gpt', 'value': f'Answer {i}.'}]}) + '\n')
        with open(d/'img.jsonl', 'w') as f:
            for i in range(n): f.write(json.dumps({'id': f'i{i}', 'image': f'images/{i // 1000:04d}/{i}.jpg', 'language': 'sw', 'conversations': conv(i)}) + '\n')
        (d/'warm.jsonl').write_text(json.dumps({'id': 'w', 'language': 'sw', 'conversations': conv(0)[1:]}) + '\n')
        JsonPool({'id': 'warm', 'path': str(d/'warm.jsonl')}, d/'cache').meta()   # imports and the language registry, once
        for name, file in (('text_only', 'text.jsonl'), ('with_images', 'img.jsonl')):
            t0, c0 = time.perf_counter(), time.process_time()
            m = JsonPool({'id': name, 'path': str(d/file)}, d/'cache').meta()
            out[f'{name}_s'], out[f'{name}_cpu_s'], out[f'{name}_kept'] = round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2), m.num_rows
        os.utime(d/'img.jsonl')   # the records file changed: a rescan, with the image verdicts cached
        t0, c0 = time.perf_counter(), time.process_time()
        JsonPool({'id': 'with_images', 'path': str(d/'img.jsonl')}, d/'cache').meta()
        out['rescan_s'], out['rescan_cpu_s'] = round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=6_000_000)
    ap.add_argument('--sizes', default='1000000,3000000,6000000')
    ap.add_argument('--scan-rows', type=int, default=20_000, help='records of the timed pool scan with checks on (0: skip)')
    ap.add_argument('--child', nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_one(a.child[0], int(a.child[1]), a.child[2] == '1', a.child[3] == '1'))); return
    with tempfile.TemporaryDirectory() as d:
        meta = Path(d)/'meta.parquet'
        t0 = time.perf_counter(); make_meta(a.rows, meta)
        print(f'machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other processes share the CPU: '
              f'wall time above CPU time means waiting)')
        print(f'generated {a.rows:,} metadata rows over 39 languages in {time.perf_counter() - t0:.1f} s '
              f'({meta.stat().st_size / 2**20:.0f} MB Parquet)')
        runs = [(int(n), True, i == 0) for i, n in enumerate(a.sizes.split(','))] + [(int(a.sizes.split(',')[-1]), False, False)]
        for n, par, base in runs:
            r = subprocess.run([sys.executable, __file__, '--child', str(meta), str(n), '1' if par else '0', '1' if base else '0'],
                               capture_output=True, text=True)
            if r.returncode: print(r.stderr); sys.exit(1)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            line = (f"N={n:>9,} allow_parallel={str(par):5}  build {res['build_s']:6.2f} s wall, {res['build_cpu_s']:5.2f} s CPU "
                    f"(+ load {res['load_s']:.2f} s)  peak RSS {res['peak_rss_gb']:.2f} GB  English {100 * res['english_share']:.2f}%  "
                    f"repeated rows {res['repeated']:,}")
            if 'pandas_baseline_s' in res:
                line += (f"\n             selection alone {res['select_cpu_s']:.2f} s CPU; pandas groupby.sample baseline (per-cell "
                         f"sampling only: no exact ratio, no quotas) {res['pandas_baseline_cpu_s']:.2f} s CPU -> ratio "
                         f"{res['pandas_baseline_cpu_s'] / max(res['select_cpu_s'], 1e-9):.2f}x")
            ok = res['build_s'] + res['load_s'] <= 60 and res['peak_rss_gb'] <= 2
            print(line + ('' if n < 6_000_000 else f"   goal (<= 60 s, <= 2 GB): {'met' if ok else 'NOT met'}"))
    if a.scan_rows:
        r = scan_bench(a.scan_rows)
        per = lambda k: r[k] / r['rows']
        print(f"pool scan with checks on, {r['rows']:,} records: text-only {r['text_only_s']:.2f} s ({r['text_only_cpu_s']:.2f} s CPU); "
              f"with one JPEG each (header + path checks) {r['with_images_s']:.2f} s ({r['with_images_cpu_s']:.2f} s CPU); "
              f"rescan with cached image verdicts {r['rescan_s']:.2f} s ({r['rescan_cpu_s']:.2f} s CPU); all kept: "
              f"{r['text_only_kept'] == r['with_images_kept'] == r['rows']}")
        for unit in ('s', 'cpu_s'):
            print(f"  extrapolated to {a.rows:,} rows ({'wall' if unit == 's' else 'CPU'}; one scan, cached for later mixes): "
                  f"text-only {per('text_only_' + unit) * a.rows / 60:.1f} min, with images {per('with_images_' + unit) * a.rows / 60:.1f} min, "
                  f"rescan {per('rescan_' + unit) * a.rows / 60:.1f} min")

if __name__ == '__main__':
    main()
