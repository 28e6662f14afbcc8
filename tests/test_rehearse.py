"""Every spec in sweeps/ rehearsed end to end on this CPU (`pangea sweep SPEC --rehearse --points 2`): the tiny model of
the spec's architecture family, an absent stage-1 checkpoint trained in the rehearsal, miniature pools and PangeaBench
releases in their official layouts; everything else (pools, stage chain, languages, tasks, report) the spec's own."""
import json
from pathlib import Path

import pytest
import yaml

from pangea_nb.cli import main as pangea_main
from pangea_nb.config import SweepConfig
from pangea_nb.contracts import read_results
from pangea_nb.sweep.rehearse import rehearsal_spec, rehearsal_root
from pangea_nb.sweep.runner import base_config, expand_grid

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT/'sweeps').glob('*.yaml'))


def cli(capsys, *argv):
    code = pangea_main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize('spec', SPECS, ids=lambda p: p.stem)
def test_dry_run_prints_every_substitution_and_writes_nothing(spec, capsys):
    src = SweepConfig.load(spec)
    code, out, err = cli(capsys, 'sweep', spec, '--rehearse', '--dry-run', '--points', '2')
    assert code == 0, err
    root = rehearsal_root(src)
    assert root.name == f'{src.name}-rehearsal' and not root.exists()           # a dry run writes nothing
    assert f'rehearsal of {src.name}' in out and 'substituted (' in out and 'grid cut to 2 point(s)' in out
    b = base_config(src)
    if b.model.lm or b.model.vision: assert 'model: ' + b.model.arch in out    # the model swap is stated, with its family
    for c in b.stage_configs():
        if c.train.init_from and not Path(c.train.init_from).exists():
            assert f'train.init_from: {c.train.init_from} (absent) -> trained in the rehearsal' in out
    for t, p in b.eval.data.items():
        if t in b.eval.tasks and not Path(p).exists(): assert f'eval.data.{t}: {p} (absent) ->' in out
    for p in b.data.pools:
        if p.get('path') and not Path(p['path']).exists(): assert f"data.pools[{p['id']}].path: {p['path']} (absent)" in out


@pytest.mark.parametrize('spec', SPECS, ids=lambda p: p.stem)
def test_rehearsal_keeps_the_specs_own_recipe(spec):
    src = SweepConfig.load(spec)
    r = rehearsal_spec(src, points=2)
    b, rb = base_config(src), base_config(r.spec)
    assert r.spec.template == src.template and r.spec.report == src.report and list(r.spec.grid) == list(src.grid)
    assert rb.data.langs == b.data.langs and rb.eval.tasks == b.eval.tasks and rb.eval.modes == b.eval.modes
    assert [(p['id'], p['kind']) for p in rb.data.pools] == [(p['id'], p['kind']) for p in b.data.pools]
    assert rb.model.arch == b.model.arch and rb.model.lm is None and rb.model.vision is None
    chain, rchain = [c.train.stage for c in b.stage_configs()], [c.train.stage for c in rb.stage_configs()]
    assert rchain[-len(chain):] == chain                                        # the spec's chain, maybe behind a stage 1
    assert all(rb.get(k) == b.get(k) for k in ('data.english_ratio', 'data.lang_proportions', 'train.lr', 'train.stage'))
    assert len(r.only) == min(2, len(expand_grid(src))) and r.only[0] == 0


@pytest.mark.parametrize('spec', SPECS, ids=lambda p: p.stem)
def test_rehearsal_runs_end_to_end(spec, capsys):
    src = SweepConfig.load(spec)
    code, out, err = cli(capsys, 'sweep', spec, '--rehearse', '--points', '2', '--quiet')
    assert code == 0, out[-2000:] + err[-3000:]
    r = rehearsal_spec(src, points=2)
    plans = [p for p in expand_grid(r.spec) if p.index in r.only]
    assert plans and all(p.out_dir.parent == rehearsal_root(src) for p in plans)
    base = base_config(src)
    tasks = [*base.eval.tasks, *(['cvqa'] if base.cultural.enabled else [])]   # a cultural run adds its culture test (CVQA layout, nbs/55a)
    for p in plans:
        man = json.loads((p.out_dir/'manifest.json').read_text())
        assert man['rehearsal'] is True and man['substitutions'] == r.subs
        rows = read_results(p.out_dir/'metrics.json')
        assert rows
        if src.template.endswith('/run.ipynb'):   # the Pangea template scores every task of the spec (pixmo's writes its own names)
            assert {row.task for row in rows} == set(tasks)
    assert json.loads((rehearsal_root(src)/'rehearsal.json').read_text())['rehearsal'] is True
    if spec.stem == 'pangea7b_english_ratio':   # one report of a rehearsal: its figures land in the rehearsal folder
        code, out, err = cli(capsys, 'sweep', 'report', spec, '--rehearse')
        assert code == 0, err
        assert list((rehearsal_root(src)/'figures').glob('*.png'))


def test_points_and_bad_flags(capsys):
    spec = ROOT/'sweeps'/'pangea7b_english_ratio.yaml'
    code, _, err = cli(capsys, 'sweep', spec, '--points', '2', '--dry-run')
    assert code == 2 and '--points' in err
    code, _, err = cli(capsys, 'sweep', spec, '--rehearse', '--slurm')
    assert code == 2 and '--rehearse runs here' in err
