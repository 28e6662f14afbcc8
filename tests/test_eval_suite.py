"""Evaluation a researcher can trust (issue 21): each task's own generation settings reach `generate`; over-long
prompts are counted and handled by the policy; a two-task suite runs in one command and reports one table;
normalised log-likelihood differs from raw where option lengths differ; `eval report` leaves the checkout clean;
a spec's `images:` with a missing image is named by `inspect` and skipped by `--skip-missing`."""
import json, shutil, subprocess, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_eval import RELEASES, releases, tiny_ckpt, run_cli   # noqa: F401 (fixtures)

from pangea_nb.contracts import read_jsonl
import pangea_nb.model.infer as minfer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spy_generate(monkeypatch):
    "Record the max_new_tokens every Predictor.generate call gets."
    calls, real = [], minfer.Predictor.generate
    def gen(self, texts, images=None, max_new_tokens=32, **kw):
        calls.append(max_new_tokens); return real(self, texts, images, max_new_tokens, **kw)
    monkeypatch.setattr(minfer.Predictor, 'generate', gen)
    return calls


def spec_release(d, n=3, max_new_tokens=4, missing=False):
    "A bring-your-own CSV benchmark with its own max_new_tokens and an images: folder."
    from pangea_nb.eval.byo import write_example_benchmark
    import yaml
    d = write_example_benchmark(d)
    spec = yaml.safe_load((d / 'spec.yaml').read_text())
    spec['max_new_tokens'] = max_new_tokens
    (d / 'spec.yaml').write_text(yaml.safe_dump(spec, allow_unicode=True))
    if missing: (d / 'imgs' / 'b.jpg').unlink()
    return d


def test_task_generation_length_reaches_generate(tiny_ckpt, tmp_path, spy_generate, capsys):
    d = spec_release(tmp_path / 'byo')
    args = ['eval', 'run', '--task', d / 'spec.yaml', '--data', d, '--model', tiny_ckpt]
    assert run_cli(*args, '--out', tmp_path / 'own.jsonl')[0] == 0
    assert set(spy_generate) == {4}                                   # the spec's max_new_tokens, not the CLI's old 32
    meta = json.loads((tmp_path / 'own.jsonl.meta.json').read_text())
    assert meta['max_new_tokens'] == 4 and meta['generation']['max_new_tokens'] == 4
    spy_generate.clear(); capsys.readouterr()
    code, out = run_cli(*args, '--out', tmp_path / 'over.jsonl', '--max-new-tokens', 6, capsys=capsys)
    assert code == 0 and set(spy_generate) == {6}
    assert "max_new_tokens 6 given on the command line overrides the task's own 4" in out.out
    row = read_jsonl(tmp_path / 'own.jsonl')[0]
    assert {'prompt', 'parsed', 'gold', 'correct', 'lang'} <= set(row)


def test_builtin_task_lengths(spy_generate):
    from pangea_nb.eval.tasks import get_task
    from pangea_nb.eval.infer import generation_settings
    assert generation_settings(get_task('mgsm'))[0]['max_new_tokens'] == 256
    assert generation_settings(get_task('xchat'))[0]['max_new_tokens'] == 1024
    assert generation_settings(get_task('pope'))[0]['max_new_tokens'] == 8


def test_overlong_prompts_counted_and_handled(releases, tiny_ckpt, tmp_path, capsys):
    small = tmp_path / 'ctx104'
    shutil.copytree(tiny_ckpt, small)
    cfg = json.loads((small / 'config.json').read_text())
    cfg['text_config']['max_position_embeddings'] = 104   # the prompts here have 103 tokens
    (small / 'config.json').write_text(json.dumps(cfg))
    root, _ = releases['xstorycloze']
    base = ['eval', 'run', '--task', 'xstorycloze', '--data', root, '--model', small, '--limit', 2, '--max-new-tokens', 8]
    capsys.readouterr()
    code, out = run_cli(*base, '--out', tmp_path / 'skip.jsonl', '--context-policy', 'skip', capsys=capsys)
    assert code == 0 and 'exceed the context of 104 tokens' in out.out, out
    rej = read_jsonl(tmp_path / 'skip.jsonl.rejects.jsonl')
    n_pred = len(read_jsonl(tmp_path / 'skip.jsonl')) if (tmp_path / 'skip.jsonl').exists() else 0
    assert rej and n_pred + len(rej) == 8 and all(r['tokens'] > 104 - 8 for r in rej)
    assert '(en 2, my 2, ru 2, sw 2)' in out.out
    code, out = run_cli(*base, '--out', tmp_path / 'trunc.jsonl', capsys=capsys)          # default policy: truncate-left
    rows = read_jsonl(tmp_path / 'trunc.jsonl')
    assert code == 0 and len(rows) == 8 and sum('truncated_tokens' in r for r in rows) == len(rej), out


def test_suite_two_tasks_one_command_one_table(releases, tiny_ckpt, tmp_path, capsys):
    suite = tmp_path / 'suite.yaml'
    suite.write_text(f"xcopa: {releases['xcopa'][0]}\nxstorycloze: {{data: {releases['xstorycloze'][0]}}}\n")
    out = tmp_path / 'suite'
    args = ['eval', 'run', '--tasks', 'xcopa,xstorycloze', '--data', suite, '--model', tiny_ckpt, '--out', out,
            '--limit', 2, '--mode', 'loglik']
    capsys.readouterr()
    code, o = run_cli(*args, capsys=capsys)
    assert code == 0, o
    assert {p.name for p in out.glob('*.jsonl') if not p.name.startswith('eval_')} == {'xcopa.loglik.jsonl', 'xstorycloze.loglik.jsonl'}
    table = o.out[o.out.index('run '):]
    assert 'xcopa' in table and 'xstorycloze' in table and 'loglik_accuracy_norm' in table and 'mul_ci' in table
    assert 'failure examples' in o.out and (out / 'eval_failures.jsonl').exists()           # read from the per-item logs
    code, o = run_cli(*args, capsys=capsys)                                      # resumable per task
    assert code == 0 and o.out.count('0 predictions (') == 2, o.out
    res = json.loads((out / 'xstorycloze.loglik.results.json').read_text())
    raw = {r['lang']: r['value'] for r in res['results'] if r['metric'] == 'accuracy'}
    norm = {r['lang']: r['value'] for r in res['results'] if r['metric'] == 'loglik_accuracy_norm'}
    assert raw.keys() == norm.keys() and raw


def test_norm_differs_where_option_lengths_differ(tiny_ckpt):
    "Options of very different lengths: per-character normalisation changes the choice on some items."
    from pangea_nb.model.infer import load_predictor
    pr = load_predictor(str(tiny_ckpt))
    opts = [['a', 'a much longer option text that goes on'], ['yes', 'no thanks, not today at all']] * 3
    texts = [f'question {i}' for i in range(len(opts))]
    sc = pr.loglik(texts, opts)
    raw = [max(range(2), key=s.__getitem__) for s in sc]
    norm = [max(range(2), key=lambda i: s[i] / len(o[i])) for s, o in zip(sc, opts)]
    assert raw != norm, (sc, raw, norm)


def test_report_leaves_checkout_clean(tmp_path, capsys):
    before = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=REPO, capture_output=True, text=True).stdout
    res = {'task': 'xcopa', 'model': 'm', 'mode': 'generate', 'summary': {'metric': 'accuracy', 'en': None, 'mul': 50.0, 'missing': 0},
           'results': [dict(run_id='r', step=None, task='xcopa', lang=l, metric='accuracy', value=v, n=4) for l, v in (('sw', 50.0), ('zh', 50.0))]}
    (tmp_path / 'r.results.json').write_text(json.dumps(res))
    import os
    cwd = os.getcwd()
    try:
        os.chdir(REPO)                                                           # run from inside the checkout
        assert run_cli('eval', 'report', tmp_path / 'r.results.json')[0] == 0
    finally: os.chdir(cwd)
    after = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=REPO, capture_output=True, text=True).stdout
    assert after == before
    assert (tmp_path / 'eval_report.csv').exists() and (tmp_path / 'eval_report.png').exists()


def test_spec_images_missing_named_and_skipped(tiny_ckpt, tmp_path, capsys):
    d = spec_release(tmp_path / 'byo', missing=True)
    capsys.readouterr()
    code, o = run_cli('eval', 'inspect', '--task', d / 'spec.yaml', '--data', d, capsys=capsys)
    assert code == 0 and "b.jpg" in o.out and "row 2" in o.out, o
    code, o = run_cli('eval', 'run', '--task', d / 'spec.yaml', '--data', d, '--model', tiny_ckpt, '--out', tmp_path / 'p.jsonl',
                      '--skip-missing', capsys=capsys)
    assert code == 0, o
    assert len(read_jsonl(tmp_path / 'p.jsonl')) == 2 and len(read_jsonl(tmp_path / 'p.jsonl.rejects.jsonl')) == 1


def test_explorer_notebook_runs_as_is(tmp_path, monkeypatch):
    "nbs/60_explorer.ipynb executes unedited under papermill (no runs: the bundled example) and its last cell shows the widget."
    papermill = pytest.importorskip('papermill')
    monkeypatch.setenv('PANGEA_HOME', str(tmp_path / 'home'))
    out = tmp_path / 'explorer.ipynb'
    before = subprocess.run(['git', 'status', '--porcelain'], cwd=REPO, capture_output=True, text=True).stdout
    papermill.execute_notebook(str(REPO / 'nbs' / '60_explorer.ipynb'), str(out), cwd=str(REPO / 'nbs'), progress_bar=False, kernel_name='python3')
    last = [c for c in json.loads(out.read_text())['cells'] if c['cell_type'] == 'code'][-1]
    assert any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in last['outputs']), last['outputs']
    assert subprocess.run(['git', 'status', '--porcelain'], cwd=REPO, capture_output=True, text=True).stdout == before
