"""Sweeps end to end: the run template under papermill, a sweep killed and resumed, GPU recipes' dry runs and Slurm scripts."""
import json, os, signal, stat, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from conftest import ROOT, BIN

def smoke_base(stage2_steps=6):
    "A smoke-sized run config (as a spec's `base`): tiny shared stages 0-1, a 48-sample stage-2 mixture, 3 test items a language."
    return {'data': {'n_samples': 48, 'langs': ['sw']}, 'train': {'micro_batch_size': 8},
            'eval': {'synthetic_n': 3, 'modes': ['generate', 'loglik']},
            'stages': [{'train.stage': 0, 'train.lr': 0.003, 'train.max_steps': 4, 'data.n_samples': 200},
                       {'train.stage': 1, 'train.lr': 0.001, 'train.max_steps': 4, 'data.n_samples': 200, 'data.english_ratio': 1.0},
                       {'train.stage': 2, 'train.max_steps': stage2_steps}]}

def spec_file(tmp, name, grid, base=None, **top):
    d = {'name': name, 'template': str(ROOT/'nbs'/'sweeps'/'run.ipynb'), 'out_dir': str(tmp/'runs'), 'jobs': 1, 'preset': 'tiny-run',
         'base': base or smoke_base(), 'grid': grid, **top}
    p = tmp/f'{name}.yaml'; p.write_text(yaml.safe_dump(d)); return p

def pangea(*args, check=True, **kw):
    r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=900, **kw)
    if check and r.returncode: raise AssertionError(f'pangea {args} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}')
    return r

def test_template_has_one_run_parameter():
    "The run template's parameters are CONFIG plus scheduling only, and it starts by loading CONFIG (a preset by hand)."
    import nbformat
    from pangea_nb.config import RunConfig
    from pangea_nb.sweep.runner import SCHEDULING_PARAMS
    nb = nbformat.read(ROOT/'nbs'/'sweeps'/'run.ipynb', as_version=4)
    i, cell = next((i, c) for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
    ns = {}; exec(cell.source, ns)
    assert sorted(k for k in ns if k.isupper()) == sorted(('CONFIG', *SCHEDULING_PARAMS))
    assert nb.cells[i + 1].source.splitlines()[:2] == ['from pangea_nb.config import RunConfig', 'cfg = RunConfig.load(CONFIG)']
    assert RunConfig.load(ns['CONFIG']).stages                      # the by-hand default: a preset with shared stages

def test_template_modules_hold_no_parameter_dict():
    "No dict of UPPER_CASE template parameters is left: a run is described by its RunConfig alone."
    import pangea_nb.sweep.template as T
    assert not [k for k, v in vars(T).items() if isinstance(v, dict) and any(str(x).isupper() for x in v)]

BAD = {'misspelt key': ({'data.english_rato': [0.5]}, "data.english_rato = 0.5: RunConfig: no field 'data.english_rato'; did you mean ['english_ratio']"),
       'wrong type': ({'data.n_samples': ['many']}, "data.n_samples = 'many': RunConfig.data: DataConfig.n_samples: expected int"),
       'out of range': ({'data.english_ratio': [1.5]}, 'data.english_ratio = 1.5: RunConfig.data: DataConfig.english_ratio: must be in [0, 1]'),
       'infinite lr': ({'train.lr': [float('inf')]}, 'train.lr = inf: RunConfig.train: TrainConfig.lr: must be finite and > 0'),
       'negative steps': ({'train.max_steps': [-5]}, 'train.max_steps = -5: RunConfig.train: TrainConfig.max_steps: must be > 0'),
       'old key': ({'ENGLISH_RATIO': [0.5]}, 'ENGLISH_RATIO = 0.5: old template parameter; write ENGLISH_RATIO \u2192 data.english_ratio'),
       'empty axis': ({'seed': []}, "SweepConfig.grid: 'seed' must map to a non-empty list")}

@pytest.mark.parametrize('case', list(BAD))
def test_bad_spec_refused_before_anything_starts(tmp_path, case, capsys):
    "Local run, --dry-run and --slurm all refuse the spec in one line naming file, key and value; nothing is created."
    from pangea_nb.sweep.launch import sweep_cmd
    grid, want = BAD[case]
    spec = spec_file(tmp_path, 'bad', grid)
    for kw in ({'quiet': True}, {'dry_run': True}, {'slurm': True}):
        assert sweep_cmd(str(spec), **kw) == 2
        err = capsys.readouterr().err.strip()
        assert err.count('\n') == 0 and err.startswith(f'error: {spec}: ') and want in err, (kw, err)
    assert not (tmp_path/'runs').exists()                       # no run folder, no kernel, no sbatch script

def test_bad_spec_refused_by_the_command(tmp_path):
    "The same through `pangea sweep` (one process per mode), and a missing template names the template."
    spec = spec_file(tmp_path, 'typo', {'data.english_rato': [0.5]})
    for extra in ((), ('--dry-run',), ('--slurm',)):
        r = pangea('sweep', spec, *extra, check=False)
        assert r.returncode == 2 and f"{spec}: data.english_rato = 0.5" in r.stderr and not r.stdout, r
    r = pangea('sweep', spec_file(tmp_path, 'nt', {'seed': [0]}, template=str(tmp_path/'none.ipynb')), '--dry-run', check=False)
    assert r.returncode == 2 and 'template = ' in r.stderr and 'none.ipynb' in r.stderr
    assert not (tmp_path/'runs').exists()

def test_yaml_bomb_refused_without_expanding(tmp_path):
    "A billion-laughs spec is refused in one line by `pangea config show` and `sweep --dry-run` (the timeout is a hang guard)."
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + ''.join(
        f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip('abcdefgh', 'bcdefghi'))
    f = tmp_path/'bomb.yaml'; f.write_text('name: bomb\nbase:\n  lol: *i\n'.replace('*i', '[]') + 'grid: {}\n' + 'x:\n' +
                                           ''.join('  ' + l + '\n' for l in bomb.splitlines()))
    for args in (('config', 'show', f, '--kind', 'sweep'), ('sweep', f, '--dry-run')):
        r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and 'expands to more than' in r.stderr and str(f) in r.stderr, r
        assert r.stderr.strip().count('\n') == 0, r.stderr

def test_nonfinite_loss_stops_training(tmp_path):
    "A learning rate far too high: training stops with a clear error and saves no model."
    from pangea_nb.config import RunConfig
    from pangea_nb.train.stages import run_stage
    from pangea_nb.train.loop import NonFiniteLoss
    cfg = RunConfig.preset('tiny').set('data.n_samples', 32).set('data.synth_langs', ['en']).set('train.max_steps', 8) \
                                  .set('train.lr', 1e30).set('train.clip_grad', 0.0).set('train.warmup_ratio', 0.0)
    with pytest.raises(NonFiniteLoss, match='loss is nan|loss is inf'): run_stage(cfg, tmp_path/'out', progress=False)
    assert not (tmp_path/'out'/'done.json').exists() and not (tmp_path/'out'/'model').exists()

@pytest.mark.slow
def test_template_through_papermill_and_report(tmp_path):
    base = {**smoke_base(), 'train': {'micro_batch_size': 8, 'log_every': 1}}   # every step logged: the retrain's log is compared
    spec = spec_file(tmp_path, 'smoke', {'data.english_ratio': [0.5], 'seed': [0]}, base=base, report={'x': 'data.english_ratio'})
    pangea('sweep', spec, '--quiet')
    (run,) = [d for d in (tmp_path/'runs').iterdir() if (d/'metrics.json').exists()]
    m = json.loads((run/'metrics.json').read_text())
    got = {(r['lang'], r['metric']) for r in m['rows']}
    assert {('en', 'exact_match'), ('sw', 'exact_match'), ('en', 'loglik_accuracy'), ('sw', 'loglik_accuracy')} <= got
    assert all(0 <= r['value'] <= 100 for r in m['rows'])
    assert m['mixture_proportions'] == {'en': 0.5, 'sw': 0.5} and m['run_info']['seconds'] > 0
    assert (run/'run.ipynb').exists() and (run/'log').exists() and (run/'samples'/'synthetic.jsonl').exists()
    # one spelling from spec to figure: run folder, params, results table, figure data and axis
    assert run.name.startswith('data.english_ratio0.5-seed0-')
    assert json.loads((run/'params.json').read_text())['point'] == {'data.english_ratio': 0.5, 'seed': 0}
    from pangea_nb.config import RunConfig
    rc = RunConfig.load(run/'config.yaml')                          # the resolved description the run used
    assert rc.data.english_ratio == 0.5 and rc.seed == 0 and rc.data.synth_langs == ['en', 'sw'] and len(rc.stages) == 3
    last = rc.stages[-1]                                            # stage 2 as trained: from the shared model, on the mixture
    assert Path(last['train.init_from']).is_relative_to(tmp_path/'runs'/'shared') and Path(last['train.init_from']).exists()
    assert [Path(p['path']).is_relative_to(run/'mixture') for p in last['data.pools']] == [True]
    assert RunConfig.load(run/'plan.yaml').stages[-1] == smoke_base()['stages'][-1]   # the grid's plan, kept beside it
    # `pangea train RUN_DIR/config.yaml` trains that stage alone and gives the run's stage-2 weights and loss log
    pangea('train', run/'config.yaml', '--out', tmp_path/'retrain', '--no-progress')
    assert sorted(p.name for p in (tmp_path/'retrain').glob('stage*')) == ['stage2', 'stages.json']
    weights = lambda d: (d/'stage2'/'model'/'model.safetensors').read_bytes()
    assert weights(tmp_path/'retrain') == weights(run)
    losses = lambda d: [json.loads(l)['loss'] for l in (d/'stage2'/'train_log.jsonl').read_text().splitlines()]
    assert losses(tmp_path/'retrain') == losses(run) and len(losses(run)) == 6
    # the explorer reads the run; the report gathers it
    from pangea_nb.explorer import Explorer
    ex = Explorer(tmp_path)
    assert ex.sweep.value == 'runs' and 'exact_match' in ex.scores.value and ex.samples.value.count('data:image/png') >= 4
    r = pangea('sweep', 'report', spec, '--out', tmp_path/'figs', '--name', 'english_ratio')
    assert (tmp_path/'figs'/'english_ratio.png').exists() and (tmp_path/'figs'/'english_ratio.csv').exists()
    assert (tmp_path/'runs'/'results.csv').exists() and 'exact_match' in r.stdout
    import pandas as pd
    assert 'data.english_ratio' in pd.read_csv(tmp_path/'runs'/'results.csv').columns
    assert list(pd.read_csv(tmp_path/'figs'/'english_ratio.csv').columns)[0] == 'data.english_ratio' 
    # one seed: the report's intervals are the run's item bootstrap, read back from its samples (nbs/54_report)
    summ = pd.read_csv(tmp_path/'runs'/'summary.csv')
    assert list(summ.columns) == ['data.english_ratio', 'task', 'metric', 'lang', 'mean', 'lo', 'hi', 'n_runs']
    avg = summ[summ.task == 'average']
    assert set(avg.metric) == {'generate', 'loglik'} and (avg.n_runs == 1).all()
    assert avg[['lo', 'hi']].notna().all().all() and (avg.lo <= avg['mean']).all() and (avg['mean'] <= avg.hi).all()
    assert {'script', 'resource_level'} <= set(pd.read_csv(tmp_path/'runs'/'results.csv').columns)

@pytest.mark.slow
def test_sweep_killed_then_resumed(tmp_path):
    "Kill the sweep while its second run trains; the rerun finishes it without redoing or duplicating the first."
    spec = spec_file(tmp_path, 'resume', {'data.english_ratio': [0.0, 1.0], 'seed': [0]}, base=smoke_base(stage2_steps=120))
    env = {**os.environ}
    p = subprocess.Popen([str(BIN/'pangea'), 'sweep', str(spec), '--quiet'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    runs = tmp_path/'runs'
    first = None
    deadline = time.time() + 600
    while time.time() < deadline and first is None:
        done = [d for d in runs.glob('*/metrics.json')] if runs.exists() else []
        if done: first = done[0]
        time.sleep(1)
    assert first is not None, 'the first run never finished'
    time.sleep(3)   # the second run is under way
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    time.sleep(3)
    before = first.stat().st_mtime_ns
    dirs = sorted(d.name for d in runs.iterdir() if d.is_dir() and d.name != 'shared')
    assert len(dirs) == 2 and len(list(runs.glob('*/metrics.json'))) == 1
    r = pangea('sweep', spec)                                       # progress on, stderr a pipe: plain lines, no bar redraws
    assert '\r' not in r.stderr and 'sweep resume: 2/2 run (100%)' in r.stderr, r.stderr[-2000:]
    assert first.stat().st_mtime_ns == before                       # not redone
    assert sorted(d.name for d in runs.iterdir() if d.is_dir() and d.name != 'shared') == dirs   # no duplicates
    assert len(list(runs.glob('*/metrics.json'))) == 2              # nothing lost
    out = pangea('sweep', spec, '--dry-run').stdout
    assert '2 done, 0 to run' in out

def test_gpu_recipes_dry_run_and_slurm(tmp_path):
    for name in ('pangea7b_english_ratio', 'pangea7b_language_proportion', 'pangea7b_ocr_samples'):
        d = yaml.safe_load((ROOT/'sweeps'/f'{name}.yaml').read_text())
        d['out_dir'] = str(tmp_path/name)
        spec = tmp_path/f'{name}.yaml'; spec.write_text(yaml.safe_dump(d))
        out = pangea('sweep', spec, '--dry-run').stdout
        assert 'H100' in out and 'to run' in out, out
        pangea('sweep', spec, '--slurm')
        sb = next((tmp_path/name/'slurm').glob('*.sbatch')).read_text()
        assert '--gpus-per-node=8' in sb and '--run-index "$SLURM_ARRAY_TASK_ID"' in sb and '#SBATCH --array=0-' in sb
    # the English-ratio recipe: 6 ratios, one seed, 8 GPUs per run
    out = pangea('sweep', tmp_path/'pangea7b_english_ratio.yaml', '--dry-run').stdout
    assert sum(f'data.english_ratio{r}-seed0-' in out for r in ('0', '0.2', '0.4', '0.6', '0.8', '1')) == 6
    # --submit through a stand-in sbatch on PATH
    fake = tmp_path/'bin'; fake.mkdir(); sb = fake/'sbatch'
    sb.write_text('#!/bin/sh\necho "4242;cluster"\n'); sb.chmod(sb.stat().st_mode | stat.S_IEXEC)
    r = pangea('sweep', tmp_path/'pangea7b_english_ratio.yaml', '--slurm', '--submit', env={**os.environ, 'PATH': f'{fake}:{os.environ["PATH"]}'})
    assert 'submitted job 4242' in r.stdout
    r = pangea('sweep', tmp_path/'pangea7b_english_ratio.yaml', '--slurm', '--submit', check=False, env={**os.environ, 'PATH': '/usr/bin:/bin'})
    assert r.returncode == 1 and 'sbatch not found' in r.stderr

def test_bad_report_key_refused_before_anything_starts(tmp_path, capsys):
    "A report axis, facet or series the spec cannot have is refused by --dry-run, --slurm and a local run, in one line naming the key."
    from pangea_nb.sweep.launch import sweep_cmd
    for rep, want in (({'x': 'data.english_rato'}, "report.x = 'data.english_rato': neither a grid key"),
                      ({'facets': ['pretrain.english_rati']}, "report.facets = 'pretrain.english_rati': neither a grid key"),
                      ({'series': 'language'}, "report.series = 'language': must be one of ['en_mul', 'lang', 'script']")):
        spec = spec_file(tmp_path, 'badrep', {'data.english_ratio': [0.5]}, report=rep)
        for kw in ({'quiet': True}, {'dry_run': True}, {'slurm': True}):
            assert sweep_cmd(str(spec), **kw) == 2
            err = capsys.readouterr().err.strip()
            assert err.count('\n') == 0 and err.startswith(f'error: {spec}: ') and want in err, (kw, err)
    assert not (tmp_path/'runs').exists()
