"""Ablation designs that answer their question: Figure 7's per-language shares vary apart from the English share (demo
world and 7B recipe), and the OCR recipe adds OCR samples on top of an unchanged mixture, scored on held-out OCR items
and broken down by script."""
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pyarrow as pa, pyarrow.parquet as pq
import pytest
from pangea_nb.config import SweepConfig
from pangea_nb.sweep.runner import expand_grid
from pangea_nb.sweep import template as T
from pangea_nb.sweep.report import share_design, by_script, script_group
from pangea_nb.data.mixture import build_mixture, select, lang_targets

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT/'sweeps'

def _plans(name, tmp_path, seed=0):
    spec = SweepConfig.load(SWEEPS/f'{name}.yaml').replace(out_dir=str(tmp_path/name))
    return [p for p in expand_grid(spec) if p.point.get('seed', 0) == seed]

def _demo_shares(name, tmp_path, n=150) -> pd.DataFrame:
    "Per run and language, the sample shares of the materialised stage-2 mixture of each seed-0 run of a demo spec (mixture shrunk to n)."
    rows = []
    for p in _plans(name, tmp_path):
        c = T.stage2_config(T.resolve_run(p.config.set('data.n_samples', n)))
        T.build_stage2_data(c, p.out_dir)
        for lang, v in T.mixture_shares(p.out_dir/'mixture').items():
            rows.append({'run_dir': p.run_id, 'lang': lang, 'sample_share': v['sample_share'], 'token_share': v['token_share']})
    df = pd.DataFrame(rows)
    en = df[df.lang == 'en'].set_index('run_dir').sample_share
    return df.assign(english_share=df.run_dir.map(en).fillna(0.0))

def test_demo_language_proportion_shares_are_not_a_function_of_the_english_share(tmp_path):
    "Figure 7 (demo world): at one English share every language gets three shares; the Figure 6 design gives one per English share."
    sh = _demo_shares('demo_language_proportion', tmp_path)
    assert sh[sh.lang == 'en'].sample_share.round(6).nunique() == 1                # English fixed (40%)
    d = share_design(sh).set_index('lang')
    assert sorted(d.index) == ['ar', 'sw', 'zh'] and (d.distinct_at_one_english_share == 3).all(), d
    per_run = sh[sh.lang != 'en'].pivot(index='run_dir', columns='lang', values='sample_share').round(3)
    assert len({tuple(r) for r in per_run.to_numpy()}) == 3                         # three distinct mixtures
    assert set(np.unique(per_run.to_numpy())) == {0.34, 0.173, 0.087}, per_run      # 4:2:1 of the 60%: 51, 26, 13 of 150 samples
    # the design it replaces: in the English-ratio demo each language's share is a function of the English share
    old = share_design(_demo_shares('demo_english_ratio', tmp_path))
    assert (old.distinct_at_one_english_share == 1).all() and (old.corr_with_english_share < -0.999).all(), old   # -1 up to integer rounding

def test_7b_language_proportion_designs_differ_on_a_balanced_pool(tmp_path):
    "The 7B recipe's runs select distinct per-language mixtures from a pool where every language has the same number of rows."
    plans = _plans('pangea7b_language_proportion', tmp_path)
    assert len(plans) == 4
    langs = plans[0].config.data.langs
    rows = [dict(pool='english', row=i, lang='en', source='en', task='vqa', tokens=30, images=1, group=f'e{i}') for i in range(600)]
    rows += [dict(pool='translated', row=k, lang=l, source='mt', task='vqa', tokens=40, images=1, group=f'g{k}')
             for k, l in enumerate(l for l in langs for _ in range(200))]                 # balanced: 200 rows in every language
    meta = pa.Table.from_pylist(rows)
    mixes = []
    for p in plans:
        cfg = T.stage2_config(p.config).data.replace(n_samples=1000)
        pos, _, _ = select(meta, cfg)
        mixes.append(pd.Series(meta['lang'].to_numpy(zero_copy_only=False)[pos]).value_counts().to_dict())
    assert len({tuple(sorted(m.items())) for m in mixes}) == 4                       # four distinct mixtures
    assert {m['en'] for m in mixes} == {400}                                         # at one English share
    for l in langs: assert len({m[l] for m in mixes}) == 4, (l, [m[l] for m in mixes])   # each language at four shares
    # what the recipe used to sweep (uniform / natural / temperature) is one mixture on this pool
    avail = pd.Series(meta['lang'].to_numpy(zero_copy_only=False)).value_counts().to_dict()
    base = T.stage2_config(plans[0].config).data.replace(n_samples=1000, lang_proportions='uniform', temperature=3.0)
    old = {tuple(sorted(lang_targets(avail, base.replace(lang_proportions=k)).items())) for k in ('uniform', 'natural', 'temperature')}
    assert len(old) == 1

def _tiny_ocr_config(plan):
    "The OCR recipe's stage-2 data at test size: its own OCR pool shrunk, a synthetic general pool in the recipe's languages."
    d = T.stage2_config(plan.config).data
    ocr = next(p for p in d.pools if p['id'] == 'ocr')
    general = [{'id': 'general-en', 'kind': 'synth', 'langs': ['en'], 'n': 50, 'source': 'general'},
               {'id': 'general-x', 'kind': 'synth', 'langs': list(d.langs), 'n': 100, 'source': 'general'}]
    k = plan.point['data.add_samples.ocr'] // 10_000                                  # 0, 5, 10, 25, 50
    return d.replace(pools=[*general, {**ocr, 'n': 60, 'image_size': 64, 'cell': 16}], n_samples=100, add_samples={'ocr': k}), k

def test_ocr_recipe_adds_ocr_on_top_of_an_unchanged_general_mixture(tmp_path):
    "Across the OCR grid the general rows (and their order) are identical; the OCR rows are exactly the swept count."
    plans = _plans('pangea7b_ocr_samples', tmp_path)
    assert [p.point['data.add_samples.ocr'] for p in plans] == [0, 50000, 100000, 250000, 500000]
    general, counts = {}, {}
    for p in plans:
        cfg, k = _tiny_ocr_config(p)
        build_mixture(cfg, tmp_path/f'mix{k}', figure=False)
        man = pq.read_table(tmp_path/f'mix{k}'/'manifest.parquet').to_pandas()
        g = man[man.pool.str.startswith('general')]
        general[k] = list(zip(g.pool, g.row, g['pass']))
        counts[k] = int((man.pool == 'ocr').sum())
        assert (g.lang == 'en').sum() == 40                                           # English share of the general part: 40%
        if k: assert set(man[man.pool == 'ocr'].lang) <= set(cfg.langs) and man[man.pool == 'ocr'].task.eq('ocr').all()
    assert counts == {0: 0, 5: 5, 10: 10, 25: 25, 50: 50}
    assert len(general[0]) == 100 and all(v == general[0] for v in general.values())

def test_ocr_recipe_scores_held_out_ocr_items_by_script(tmp_path):
    "The recipe's evaluation is synthetic_ocr on the template's OCR world: it loads, scores, and its results group by script."
    from pangea_nb.eval.tasks import get_task, select_items, resolve_images, score_predictions
    from pangea_nb.sweep.results import gather
    from pangea_nb.contracts import write_results
    plan = _plans('pangea7b_ocr_samples', tmp_path)[0]
    cfg = T.stage2_config(plan.config)
    assert cfg.eval.tasks == ['synthetic_ocr'] and not cfg.eval.data                  # the template's own held-out OCR world
    small = cfg.set('eval.synthetic_n', 3)                                             # at the recipe's own image size (336 px, 14 px cells)
    world = T.eval_world(small, tmp_path/'shared', T.WORLD_TASKS['synthetic_ocr'])
    task = get_task('synthetic_ocr')
    items, missing = resolve_images(task, select_items(task, world), task.images_root)
    assert not missing and {i.lang for i in items} == {'en', *cfg.data.langs} and all(i.meta['family'] == 'ocr' for i in items)
    assert all(r['value'] == 100.0 for r in score_predictions(task, items, {i.id: i.answer for i in items})['results'])
    langs = sorted(cfg.data.langs)
    assert {script_group(l) for l in langs} == {'Latin', 'CJK', 'other'}
    for k in (0, 50000):                                                              # two grid points, predictions of varying quality
        rd = tmp_path/'runs'/f'data.add_samples.ocr{k}-seed0-x'; rd.mkdir(parents=True)
        (rd/'params.json').write_text(json.dumps({'point': {'data.add_samples.ocr': k, 'seed': 0}}))
        preds = {i.id: (i.answer if (k or script_group(i.lang) == 'Latin') else 'zzz') for i in items}
        write_results(rd/'metrics.json', score_predictions(task, items, preds, rd.name)['results'])
    s = by_script(gather(tmp_path/'runs'), 'data.add_samples.ocr').set_index(['data.add_samples.ocr', 'script'])
    assert s.loc[(0, 'Latin'), 'mean'] == 100.0 and s.loc[(0, 'CJK'), 'mean'] == 0.0 and s.loc[(50000, 'CJK'), 'mean'] == 100.0
    assert s.xs(0, level=0).n_langs.to_dict() == {'CJK': 3, 'Latin': 4, 'other': 3}
