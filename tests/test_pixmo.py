"""Multi-PixMo end to end: regeneration-translation and benchmark translation with tiny transformers models and against
a real `pangea serve` process, option alignment over every translated item, the CLI (resume), and the ablation recipe
through `pangea sweep` with smoke parameters."""
import json, os, signal, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path
import pytest, yaml
from conftest import ROOT, BIN, env1, pangea_serve

TASKS = ('mmbench', 'scienceqa', 'mme', 'pope', 'ai2d')




pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    from pangea_nb.backends.local import build_tiny_mt, build_tiny_llava
    d = tmp_path_factory.mktemp('pixmo_models')
    return {'nllb': build_tiny_mt(d/'nllb', 'nllb', langs=('en', 'es', 'fr', 'de', 'it')), 'llava': build_tiny_llava(d/'llava')}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A small level-1 world: English training scenes for the sources, test scenes for the benchmarks."
    from pangea_nb.data.synth import write_world, WorldConfig
    d = tmp_path_factory.mktemp('pixmo_world')
    write_world(d, WorldConfig(n_train=60, n_test=60, langs=['en'], families={'caption': 1, 'vqa': 2, 'count': 1, 'mcq': 1, 'ocr': 1}), progress=False)
    return d


@pytest.fixture(scope='module')
def bench(world, tmp_path_factory):
    from pangea_nb.pixmo.bench import write_synthetic_benchmarks
    d = tmp_path_factory.mktemp('pixmo_bench')
    return write_synthetic_benchmarks(world, d, langs=['es', 'ru'], n=12)


def lines(p): return [json.loads(l) for l in Path(p).read_text(encoding='utf-8').splitlines() if l.strip()]


def check_report(rep, out):
    "Counts add up; every reject names its reasons; every kept record names its source item and method."
    assert rep['in'] == rep['kept'] + rep['rejected'] > 0
    rej = lines(out/'rejects.jsonl') if (out/'rejects.jsonl').exists() else []
    assert len(rej) == rep['rejected'] and all(r['reasons'] for r in rej)
    kept = [r for f in out.glob('*.jsonl') if f.stem not in ('rejects', 'ledger') for r in lines(f)]
    assert len(kept) == rep['kept']
    assert all(r['provenance']['source_item'] and r['provenance']['method'] in ('source', 'translate', 'regenerate') for r in kept)
    return kept, rej


# ---- the synthetic world: every benchmark translated, option alignment over every item ---------------------------

def test_synthetic_benchmarks_translated_and_aligned(bench):
    from pangea_nb.pixmo.bench import translate_bench, check_alignment
    from pangea_nb.eval.tasks import get_task, select_items
    for t in TASKS:
        d = bench['tasks'][t]
        rep = translate_bench(t, d, ['es', 'ru'], d, error_rate=0.2, seed=1, progress=False)
        al = check_alignment(t, d, d, ['es', 'ru'])
        assert al['problems'] == [], (t, al['problems'][:3])
        for l in ('es', 'ru'):
            assert al['by_lang'][l] == rep['languages'][l]['kept'] > 0          # every translated item was checked
            items = select_items(get_task(t), d, langs=[l])
            assert len(items) == al['by_lang'][l] and all(i.lang == l for i in items)
        if t == 'pope':                                                          # balance: same yes/no counts as the source
            for l in ('es', 'ru'):
                c = Counter(i.answer for i in select_items(get_task(t), d, langs=[l]))
                assert c['yes'] == c['no']
        if t == 'mme':                                                           # an image keeps both or none of its questions
            for l in ('es', 'ru'):
                per = Counter(i.meta['image'] for i in select_items(get_task(t), d, langs=[l]))
                assert set(per.values()) == {2}


# ---- tiny transformers models ------------------------------------------------------------------------------------

def test_regenerate_with_tiny_transformers_models(models, world, tmp_path):
    "A random-weight NLLB (translate) and a random-weight LLaVA (regenerate from the image): QC rejects their garbage, by reason."
    from pangea_nb.pixmo.regenerate import RegenerateConfig, regenerate
    base = dict(synthetic_world=str(world), targets=['en', 'es', 'fr'], limit=8, batch_size=8, max_new_tokens=24)
    rep = regenerate(RegenerateConfig(**base, backend=f"hf-mt:{models['nllb']}"), tmp_path/'mt', progress=False)
    kept, rej = check_report(rep, tmp_path/'mt')
    assert rep['by_language']['en']['kept'] == rep['by_language']['en']['in']   # the sources themselves
    assert rep['by_language']['es']['in'] == rep['by_language']['en']['in']
    assert {r for x in rej for r in x['reasons']} <= {'wrong_language', 'repetition', 'length_ratio', 'empty', 'placeholders', 'numbers',
                                                       'untranslated', 'untranslated_words', 'backend_error', 'in_image_text', 'backtranslation'}
    assert rep['backend']['backend'] == 'hf-mt'
    rep = regenerate(RegenerateConfig(**base, method='regenerate', backend=f"hf-llava:{models['llava']}", backtranslate=False), tmp_path/'vlm', progress=False)
    kept, rej = check_report(rep, tmp_path/'vlm')
    assert rep['by_language']['es']['rejected'] == rep['by_language']['es']['in']   # random weights: nothing passes
    assert rep['backend']['backend'] == 'hf-llava'


def test_translate_bench_with_tiny_mt(models, bench, tmp_path):
    from pangea_nb.pixmo.bench import translate_bench, check_alignment
    d = bench['tasks']['mmbench']
    rep = translate_bench('mmbench', d, ['es'], tmp_path/'mm', backend=f"hf-mt:{models['nllb']}", progress=False)
    r = rep['languages']['es']
    assert r['kept'] + r['rejected_qc'] + r['dropped_with_group'] == rep['items'] and r['by_reason']
    assert (tmp_path/'mm'/'MMBench_DEV_EN.tsv').exists() and (tmp_path/'mm'/'es'/'MMBench_DEV_ES.tsv').exists()
    assert check_alignment('mmbench', tmp_path/'mm', tmp_path/'mm', ['es'])['problems'] == []
    assert len(lines(tmp_path/'mm'/'es'/'mmbench_rejects.jsonl')) == rep['items'] - r['kept']


# ---- a real `pangea serve` process -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def served(models):
    "`pangea serve` of a tiny random-weight LLaVA, as a separate process."
    with pangea_serve(models['llava']) as url: yield url


def test_against_pangea_serve(served, world, bench, tmp_path):
    "Both methods and a benchmark translation over HTTP; the CLI resumes a finished run without a model call."
    cfg = {'synthetic_world': str(world), 'targets': ['en', 'es'], 'limit': 4, 'batch_size': 8, 'max_new_tokens': 16, 'backend': served}
    (tmp_path/'regen.yaml').write_text(yaml.safe_dump({**cfg, 'method': 'regenerate'}))
    r = subprocess.run([str(BIN/'pangea'), 'pixmo', 'regenerate', str(tmp_path/'regen.yaml'), '--out', str(tmp_path/'vlm'), '--json'],
                       capture_output=True, text=True, env=env1(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path/'vlm'/'report.json').read_text())
    check_report(rep, tmp_path/'vlm')
    assert rep['backend']['endpoints'] == [served] and rep['method'] == 'regenerate'
    r2 = subprocess.run([str(BIN/'pangea'), 'pixmo', 'regenerate', str(tmp_path/'regen.yaml'), '--out', str(tmp_path/'vlm'), '--json'],
                        capture_output=True, text=True, env=env1(), timeout=600)
    assert r2.returncode == 0 and json.loads((tmp_path/'vlm'/'report.json').read_text())['run'].get('done', 0) == 0   # resumed: nothing redone
    from pangea_nb.pixmo.regenerate import RegenerateConfig, regenerate
    rep = regenerate(RegenerateConfig(**cfg), tmp_path/'chat', progress=False)         # translation through the chat prompt
    check_report(rep, tmp_path/'chat')
    r = subprocess.run([str(BIN/'pangea'), 'pixmo', 'translate-bench', '--task', 'pope', '--data', str(bench['tasks']['pope']), '--to', 'es',
                        '--out', str(tmp_path/'pope'), '--backend', served], capture_output=True, text=True, env=env1(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'alignment:' in r.stdout and (tmp_path/'pope'/'es'/'pope_provenance.jsonl').exists()
    rep = json.loads((tmp_path/'pope'/'pope_translate_report.json').read_text())
    assert rep['backend']['endpoints'] == [served]


def test_cli_errors_name_the_problem(world, tmp_path):
    bad = tmp_path/'bad.yaml'; bad.write_text(yaml.safe_dump({'synthetic_world': str(world), 'targets': ['en', 'klingon-xx']}))
    r = subprocess.run([str(BIN/'pangea'), 'pixmo', 'regenerate', str(bad), '--out', str(tmp_path/'o')], capture_output=True, text=True)
    assert r.returncode == 1 and 'RegenerateConfig.targets' in r.stderr and 'klingon-xx' in r.stderr
    r = subprocess.run([str(BIN/'pangea'), 'pixmo', 'translate-bench', '--task', 'gqa', '--data', str(tmp_path), '--to', 'es', '--out', str(tmp_path/'o')],
                       capture_output=True, text=True)
    assert r.returncode == 1 and '--task must be one of' in r.stderr


# ---- the paper's five languages offline; human-check sheets and agreement --------------------------------------

def test_five_languages_offline_benchmarks_aligned(tmp_path):
    "fr, de, it render in the world and go through the benchmark pipeline (incl. German MMBench, whose _DE once met _DEV)."
    from pangea_nb.data.synth import write_world, WorldConfig
    from pangea_nb.data.templates import load_pack
    from pangea_nb.pixmo.bench import write_synthetic_benchmarks, translate_bench, check_alignment
    others = ['es', 'fr', 'de', 'it']
    assert all(load_pack(l).reviewed is False and load_pack(l).default_world is False for l in ('fr', 'de', 'it'))
    write_world(tmp_path/'w', WorldConfig(n_train=0, n_test=24, langs=['en'], families={'vqa': 2, 'exists': 1, 'mcq': 1}), progress=False)
    sb = write_synthetic_benchmarks(tmp_path/'w', tmp_path/'b', langs=others, n=4)
    for t in TASKS:
        d = sb['tasks'][t]
        rep = translate_bench(t, d, others, d, error_rate=0.1, seed=2, progress=False)
        al = check_alignment(t, d, d, others)
        assert al['problems'] == [], (t, al['problems'][:3])
        assert all(al['by_lang'][l] == rep['languages'][l]['kept'] > 0 for l in others), (t, al['by_lang'])


def test_human_agreement_cli_prints_fleiss_kappa(tmp_path):
    "Two filled sheets through the CLI: fleiss_kappa beside gwet_ac1 and cohen_kappa, with the hand-computed 14/30."
    for name, labs in (('a', ['yes', 'yes', 'no', 'no']), ('b', ['yes', 'no', 'no', 'no'])):
        (tmp_path/f'{name}.csv').write_text('id,lang,source_text,translation,adequacy_1to5,fluency_1to5,grounded_yes_no,comment\n'
                                            + ''.join(f'i{k},de,x,y,,,{l},\n' for k, l in enumerate(labs)))
    r = subprocess.run([str(BIN/'pangea'), 'pixmo', 'human-agreement', f"{tmp_path/'a.csv'},{tmp_path/'b.csv'}", '--out', str(tmp_path/'agree.csv')],
                       capture_output=True, text=True, env=env1())
    assert r.returncode == 0, r.stderr[-2000:]
    head = r.stdout.splitlines()[0].split()
    assert {'gwet_ac1', 'cohen_kappa', 'fleiss_kappa'} <= set(head)
    import pandas as pd
    row = pd.read_csv(tmp_path/'agree.csv').set_index(['lang', 'criterion']).loc[('all', 'grounded_yes_no')]
    assert abs(row['fleiss_kappa'] - 14 / 30) < 1e-9 and abs(row['cohen_kappa'] - 0.5) < 1e-9


def test_human_export_for_translated_benchmarks(bench, tmp_path):
    "A translate-bench output folder gives a sheet stratified by language and task, each row a translated item beside its source."
    import pandas as pd
    from pangea_nb.pixmo.bench import translate_bench
    from pangea_nb.pixmo.human import human_export_cli
    for t in ('mmbench', 'pope'):
        translate_bench(t, bench['tasks'][t], ['es', 'ru'], tmp_path/'tb', error_rate=0.0, seed=0, progress=False)
    paths = human_export_cli(str(tmp_path/'tb'), str(tmp_path/'sheets'), per_stratum=3)
    sheet = pd.read_csv(paths['csv'])
    assert sheet.groupby(['lang', 'source']).size().to_dict() == {(l, t): 3 for l in ('es', 'ru') for t in ('mmbench', 'pope')}
    assert sheet.translation.str.startswith('question: ').all() and not (sheet.source_text == sheet.translation).any()


# ---- the ablation recipe under `pangea sweep` ---------------------------------------------------------------------

SMOKE = {'data': {'langs': ['es', 'de']}, 'pixmo': {'n_train': 40},   # two of the four: time; all five: test above 'train': {'micro_batch_size': 8},
         'eval': {'synthetic_n': 4, 'tasks': list(TASKS), 'modes': ['generate', 'loglik']},
         'stages': [{'train.stage': 0, 'train.lr': 0.003, 'train.max_steps': 4, 'data.n_samples': 200},
                    {'train.stage': 1, 'train.lr': 0.001, 'train.max_steps': 4, 'data.n_samples': 200, 'data.english_ratio': 1.0},
                    {'train.stage': 2, 'train.max_steps': 6}]}


def test_template_has_one_run_parameter_and_the_spec_checks():
    "The ablation template takes CONFIG (plus scheduling); the shipped spec expands into validated run configs."
    import nbformat
    import pangea_nb.pixmo.ablation as A
    from pangea_nb.config import SweepConfig
    from pangea_nb.sweep.runner import expand_grid
    nb = nbformat.read(ROOT/'nbs'/'sweeps'/'pixmo_run.ipynb', as_version=4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    ns = {}; exec(cell.source, ns)
    assert sorted(k for k in ns if k.isupper()) == ['CONFIG', 'PROGRESS', 'SHARED_DIR', 'THREADS']
    assert not [k for k, v in vars(A).items() if isinstance(v, dict) and any(str(x).isupper() for x in v)]
    plans = expand_grid(SweepConfig.load(ROOT/'sweeps'/'pixmo_ablation.yaml'))
    assert [p.config.pixmo.train_langs for p in plans[::3]] == ['en', 'all'] and len(plans) == 6


def test_ablation_report_keeps_the_dotted_arm_name(tmp_path):
    "The report's table, CSV, JSON and figure legend spell the arm as the grid does: pixmo.train_langs (no rename)."
    import pandas as pd
    from pangea_nb.contracts import write_results
    from pangea_nb.pixmo.ablation import ablation_report, SCORES
    for arm, base in (('en', 40.0), ('all', 50.0)):
        for seed in (0, 1):
            rd = tmp_path/'runs'/f'pixmo.train_langs{arm}-seed{seed}'; rd.mkdir(parents=True)
            write_results(rd/'metrics.json', [dict(run_id=rd.name, step=1, task=t, lang=l, metric='accuracy', value=base + seed + (l == 'en'), n=4)
                                              for t in SCORES['generate'][1] for l in ('en', 'es')])
            (rd/'params.json').write_text(json.dumps({'point': {'pixmo.train_langs': arm, 'seed': seed}}))
    rep = ablation_report(tmp_path/'runs', tmp_path/'figs')
    csv = pd.read_csv(tmp_path/'figs'/'pixmo_ablation.csv')
    assert list(csv.columns[:3]) == ['mode', 'lang', 'pixmo.train_langs'] and set(csv['pixmo.train_langs']) == {'en', 'all'}
    summ = json.loads((tmp_path/'figs'/'pixmo_ablation.json').read_text())
    assert all('pixmo.train_langs' in r and 'train_langs' not in r for r in summ['by_arm'])
    assert rep['delta_non_english_mean'] == {'generate': 10.0}


@pytest.mark.slow
def test_ablation_recipe_smoke(tmp_path):
    spec = tmp_path/'pixmo.yaml'
    spec.write_text(yaml.safe_dump({'name': 'pixmo_smoke', 'template': str(ROOT/'nbs'/'sweeps'/'pixmo_run.ipynb'), 'out_dir': str(tmp_path/'runs'),
                                    'jobs': 1, 'preset': 'tiny-pixmo', 'base': SMOKE, 'grid': {'pixmo.train_langs': ['en', 'all'], 'seed': [0]}}))
    r = subprocess.run([str(BIN/'pangea'), 'sweep', str(spec), '--quiet'], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = sorted((tmp_path/'runs').glob('*/metrics.json'))
    assert len(runs) == 2
    for m in runs:
        rows = json.loads(m.read_text())['rows']
        got = {(x['task'], x['lang']) for x in rows}
        assert {(t, l) for t in TASKS for l in ('en', 'es', 'de')} <= got
        assert {('heldout-ama', l) for l in ('en', 'es', 'de')} | {('heldout-cap', 'en')} <= got   # the held-out regenerated split
        # (captions share one instruction; where the translator's error draw hits it in a language, QC drops all of that language's captions)
        assert all(0 <= x['value'] <= 100 or x['metric'].startswith('mme') for x in rows)
    n = {json.loads((m.parent/'params.json').read_text())['point']['pixmo.train_langs']: json.loads(m.read_text())['train_samples'] for m in runs}
    assert n['all'] == n['en'] > 0                                                 # matched arms: the same number of samples
    td = {json.loads((m.parent/'params.json').read_text())['point']['pixmo.train_langs']: json.loads(m.read_text())['run_info']['train_data'] for m in runs}
    assert set(td['en']['by_lang']) == {'en'} and set(td['all']['by_lang']) == {'en', 'es', 'de'}   # ... from every language
    r = subprocess.run([str(BIN/'pangea'), 'pixmo', 'ablation-report', str(spec), '--out', str(tmp_path/'figs')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ('pixmo_ablation.png', 'pixmo_ablation.csv', 'pixmo_ablation.json'): assert (tmp_path/'figs'/f).exists()
    assert 'pixmo.train_langs' in (tmp_path/'figs'/'pixmo_ablation.csv').read_text().splitlines()[0].split(',')   # the grid's spelling
    summ = json.loads((tmp_path/'figs'/'pixmo_ablation.json').read_text())
    assert summ['runs'] == 2 and set(summ['delta_english']) == {'generate', 'loglik', 'heldout-cap', 'heldout-ama'}
    assert {(r['mode'], r['lang']) for r in summ['paired']} >= {('generate', 'en'), ('generate', 'non-en')}
    assert not any(r['significant'] for r in summ['paired'])                       # one seed: no interval, no difference claimed
