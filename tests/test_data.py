"""The data core end to end through the `pangea` console script: synthetic world, validation, mixtures."""
import json, subprocess
from pathlib import Path
import pytest
from conftest import ROOT, BIN

def pangea(*args, check=True, timeout=300):
    r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode: raise AssertionError(f'pangea {args} exited {r.returncode}: {r.stderr}')
    return r

# ---------------------------------------------------------------- synthetic world

def test_synth_world_cli_deterministic_and_self_consistent(tmp_path):
    from PIL import Image
    from pangea_nb.data.schema import read_samples
    from pangea_nb.data.synth import synth_answer_correct, scene_key, WorldConfig
    args = ('--n', 60, '--n-test', 12, '--langs', 'en,ja,ar,sw', '--level', 1, '--seed', 7)
    summary = json.loads(pangea('data', 'synth', '--out', tmp_path/'a', *args).stdout)
    assert summary['counts']['train']['by_language'] == {'ar': 15, 'en': 15, 'ja': 15, 'sw': 15}
    pangea('data', 'synth', '--out', tmp_path/'b', *args)
    for split in ('train', 'test'):   # same seed, same bytes
        assert (tmp_path/'a'/f'{split}.jsonl').read_bytes() == (tmp_path/'b'/f'{split}.jsonl').read_bytes()
    tr, te = (list(read_samples(tmp_path/'a'/f'{s}.jsonl')) for s in ('train', 'test'))
    assert len(tr) == 60 and len(te) == 12
    for s in tr + te:
        assert synth_answer_correct(s.turns[-1].text, s), s.id
        if s.images:
            with Image.open(tmp_path/'a'/s.images[0]) as im: assert im.size == (64, 64)
    cfg = WorldConfig(level=1, seed=7)
    key = lambda s: json.dumps(scene_key(s.meta['world']['scene']['objects'], cfg))
    assert not {key(s) for s in tr if s.meta['world']['scene']} & {key(s) for s in te if s.meta['world']['scene']}
    man = json.loads((tmp_path/'a'/'manifest.json').read_text())
    assert man['config']['seed'] == 7 and all(p['reviewed'] is False for p in man['packs'].values())
    assert 'covered_scripts' in man['ocr']

def test_synth_text_only(tmp_path):
    out = json.loads(pangea('data', 'synth', '--out', tmp_path, '--n', 40, '--langs', 'en,hi,zh', '--text-only').stdout)
    rows = [json.loads(l) for l in (tmp_path/'parallel.jsonl').read_text(encoding='utf-8').splitlines()]
    assert out['lines'] == len(rows) > 20 and set(rows[0]) == {'id', 'en', 'hi', 'zh'}
    assert len((tmp_path/'text'/'hi.txt').read_text(encoding='utf-8').splitlines()) == len(rows)

def test_synth_cli_errors(tmp_path):
    r = pangea('data', 'synth', '--n', 5, check=False)
    assert r.returncode == 1 and '--out DIR is required' in r.stderr
    r = pangea('data', 'synth', '--out', tmp_path, '--langs', 'en,xx', check=False)
    assert r.returncode == 1 and "unknown language code 'xx'" in r.stderr and 'Traceback' not in r.stderr
    r = pangea('data', 'synth', '--out', tmp_path, '--level', 5, check=False)
    assert r.returncode == 1 and 'WorldConfig.level' in r.stderr
    r = pangea('data', 'synth', '--out', tmp_path, '--langs', 'fi', check=False)
    assert r.returncode == 1 and "no language pack for ['fi']" in r.stderr

# ---------------------------------------------------------------- validation

def test_validate_every_bad_input_and_rejects_file(tmp_path):
    from pangea_nb.data.validate import make_bad_release
    data = make_bad_release(tmp_path/'release')
    r = pangea('data', 'validate', data, '--json', '--rejects', tmp_path/'rejects.jsonl')
    rep = json.loads(r.stdout)
    assert set(rep) >= {'total', 'valid', 'rejected', 'by_language', 'by_source', 'by_task', 'problems'}
    assert all(set(p) >= {'id', 'field', 'reason'} for p in rep['problems'])
    assert (rep['total'], rep['valid'], rep['rejected']) == (20, 3, 17)
    errors = {}
    for p in rep['problems']:
        if p['severity'] == 'error': errors.setdefault(p['id'], []).append((p['field'], p['reason']))
    expect = {  # id -> (field, words of the reason)
        'missing-image': ('image', 'missing image file'), 'empty-image': ('image', 'empty image file'),
        'undecodable': ('image', 'undecodable image'), 'bomb': ('image', 'refused before decoding'),
        'dotdot': ('image', 'escapes the data root'), 'absolute': ('image', 'must be relative'),
        'symlink-out': ('image', 'escapes the data root'), 'marker-mismatch': ('image', '0 <image> marker(s)'),
        'two-markers': ('image', '2 <image> marker(s)'), 'empty-turn': ('conversations[0].value', 'empty user turn'),
        'non-string': ('conversations[0].value', 'must be a string'), 'wrong-order': ('conversations[0].from', 'wrongly ordered'),
        'empty-reply': ('conversations[1].value', 'empty assistant reply'), 'unknown-lang': ('language', "unknown language code 'xx'"),
        'good': ('id', 'duplicate id'), 'line 4': (None, 'malformed JSON line'), None: ('id', 'missing id')}
    for rid, (fld, words) in expect.items():
        assert any(f == fld and words in why for f, why in errors.get(rid, [])), (rid, errors.get(rid))
    rejects = [json.loads(l) for l in (tmp_path/'rejects.jsonl').read_text().splitlines()]
    assert len(rejects) == 17 and all(r['reason'] and 'field' in r for r in rejects)
    assert {r['id'] for r in rejects} >= {'bomb', 'symlink-out', 'empty-reply', 'line 4'}
    assert next(r for r in rejects if r['id'] == 'bomb')['record']['image'] == 'images/bomb.png'   # the record is kept
    # --strict turns rejections into a failing exit status; a missing file is a one-line error
    assert pangea('data', 'validate', data, '--strict', check=False).returncode == 1
    r = pangea('data', 'validate', tmp_path/'nope.json', check=False)
    assert r.returncode == 1 and 'no such file' in r.stderr

def test_validate_real_pangeains_sample(shared, tmp_path):
    data = shared/'data'/'pangeains-sample'/'sample_data.json'
    rep = json.loads(pangea('data', 'validate', data, '--json', '--rejects', tmp_path/'rej.jsonl', '--lang-source', 'pangeains').stdout)
    assert rep['total'] == 270 and rep['valid'] + rep['rejected'] == 270
    assert rep['text_only'] == 30 and rep['missing_language'] == 30 and rep['by_language']['und'] == 30
    assert rep['by_language']['zh-Hans'] == 20 and rep['by_language']['ur'] == 10 and rep['by_language']['ko'] == 3
    assert not {'zh_simplified', 'urdu', 'kr'} & set(rep['by_language'])
    no_lang = [p for p in rep['problems'] if p['field'] == 'language' and 'no language' in p['reason']]
    assert len(no_lang) == 30 and all(p['severity'] == 'warning' for p in no_lang)
    assert len((tmp_path/'rej.jsonl').read_text().splitlines()) == rep['rejected']

# ---------------------------------------------------------------- mixtures

def test_mix_cli_exact_composition_and_materialize(tmp_path):
    import pyarrow.parquet as pq
    from pangea_nb.config import DataConfig
    from pangea_nb.data.schema import read_samples
    cfg = DataConfig(n_samples=120, english_ratio=0.25, synth_langs=['en', 'sw', 'ja', 'ar'], seed=5,
                     lang_proportions={'sw': 2, 'ja': 1, 'ar': 1}, source_quotas={}, allow_parallel=False)
    cfg.save(tmp_path/'mix.yaml')
    st = json.loads(pangea('data', 'mix', tmp_path/'mix.yaml', '--out', tmp_path/'m', '--json').stdout)
    assert st['selected'] == 120 and st['by_language'] == {'en': 30, 'sw': 45, 'ja': 23, 'ar': 22}
    man = pq.read_table(tmp_path/'m'/'manifest.parquet')
    assert man.num_rows == 120 and len(set(man['group'].to_pylist())) == 120          # no item with its translation
    full = json.loads((tmp_path/'m'/'stats.json').read_text())
    assert full['english_ratio_selected'] == 0.25 and full['tokens']['total'] > 0
    assert (tmp_path/'m'/'figures'/'composition.png').exists() and (tmp_path/'m'/'figures'/'composition.csv').exists()
    # the same config and seed give the same manifest
    pangea('data', 'mix', tmp_path/'mix.yaml', '--out', tmp_path/'m2')
    assert pq.read_table(tmp_path/'m2'/'manifest.parquet').equals(man)
    res = json.loads(pangea('data', 'materialize', tmp_path/'m', '--shard-size', 50, '--json').stdout)
    assert res['rows'] == 120 and len(res['shards']) == 3
    got = [s for f in res['shards'] for s in read_samples(tmp_path/'m'/f)]
    assert [s.provenance['mixture_pool'] for s in got] == man['pool'].to_pylist()
    for f in res['shards']:   # the mixture directory is a valid, self-contained data root
        rep = json.loads(pangea('data', 'validate', tmp_path/'m'/f, '--root', tmp_path/'m', '--json').stdout)
        assert rep['rejected'] == 0, rep['problems'][:3]

def test_mix_cli_small_pool_policies(tmp_path):
    from pangea_nb.config import DataConfig
    from pangea_nb.data.schema import Sample, Turn, write_samples
    recs = [Sample(f'r{i}', [Turn('user', f'Question {i}?'), Turn('assistant', f'Answer {i}.')], [], ['en', 'sw', 'sw', 'yo'][i % 4])
            for i in range(40)]
    write_samples(tmp_path/'pool.jsonl', recs)
    base = dict(n_samples=60, english_ratio=0.5, pools=[{'id': 'p', 'kind': 'llava', 'path': str(tmp_path/'pool.jsonl')}], seed=1)
    DataConfig(**base).save(tmp_path/'err.yaml')
    r = pangea('data', 'mix', tmp_path/'err.yaml', '--out', tmp_path/'e', check=False)
    assert r.returncode == 1 and 'too small: language en' in r.stderr and 'needs 30 samples but holds 10' in r.stderr
    DataConfig(**base, small_pool='repeat').save(tmp_path/'rep.yaml')
    st = json.loads(pangea('data', 'mix', tmp_path/'rep.yaml', '--out', tmp_path/'r', '--json').stdout)
    assert st['selected'] == 60 and st['by_language']['en'] == 30
    assert any(e.get('action') == 'repeat' and e['lang'] == 'en' for e in st['events'])
    DataConfig(**base, small_pool='cap').save(tmp_path/'cap.yaml')
    st = json.loads(pangea('data', 'mix', tmp_path/'cap.yaml', '--out', tmp_path/'c', '--json').stdout)
    assert st['by_language']['en'] == 10 and st['selected'] < 60
    res = json.loads(pangea('data', 'materialize', tmp_path/'r', '--json').stdout)
    ids = [json.loads(l)['id'] for l in (tmp_path/'r'/res['shards'][0]).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 60   # repeated rows get distinct ids

# ---------------------------------------------------------------- Hugging Face datasets and the real releases

def test_hf_dataset_round_trip(tmp_path):
    from pangea_nb.data.hf import write_hf, read_hf, from_hf_dataset
    from pangea_nb.data.synth import iter_world, WorldConfig, synth_answer_correct, write_world
    wp = write_world(tmp_path/'w', WorldConfig(n_train=24, n_test=0, langs=['en', 'ja', 'ar'], seed=2), progress=False)
    from pangea_nb.data.schema import read_samples
    ss = list(read_samples(wp.train))
    write_hf(ss, tmp_path/'ds', root=wp.root)
    back = list(from_hf_dataset(read_hf(tmp_path/'ds'), tmp_path/'out'))
    assert [b.id for b in back] == [s.id for s in ss] and [b.meta for b in back] == [s.meta for s in ss]
    for a, b in zip(ss, back):
        assert [t.text for t in a.turns] == [t.text for t in b.turns] and synth_answer_correct(b.turns[-1].text, b)
        for x, y in zip(a.images, b.images): assert (wp.root/x).read_bytes() == (tmp_path/'out'/y).read_bytes()

def test_release_layouts_extract_validate_mix(tmp_path):
    from pangea_nb.config import DataConfig
    from pangea_nb.data.releases import make_pangeains_layout, make_llava_pretrain_layout
    pi, lp = make_pangeains_layout(tmp_path/'PangeaInstruct', n_per=4), make_llava_pretrain_layout(tmp_path/'LLaVA-Pretrain', n=6)
    assert set(json.loads(pangea('data', 'extract', pi).stdout).values()) == {4}
    assert json.loads(pangea('data', 'extract', lp).stdout) == {'images.zip': 6}
    rep = json.loads(pangea('data', 'validate', pi/'PangeaIns.json', '--lang-source', 'pangeains', '--json').stdout)
    assert (rep['total'], rep['rejected']) == (13, 0) and rep['by_language']['ko'] == 4 and rep['by_language']['zh-Hans'] == 1
    rep = json.loads(pangea('data', 'validate', lp/'blip_laion_cc_sbu_558k.json', '--root', lp/'images', '--json').stdout)
    assert (rep['total'], rep['rejected']) == (6, 0)
    DataConfig(n_samples=16, english_ratio=0.5, small_pool='repeat', pools=[
        {'id': 'pi', 'kind': 'pangeains', 'path': str(pi)}, {'id': 'lp', 'kind': 'llava_pretrain', 'path': str(lp)}]).save(tmp_path/'mix.yaml')
    st = json.loads(pangea('data', 'mix', tmp_path/'mix.yaml', '--out', tmp_path/'m', '--materialize-jsonl', '--json').stdout)
    assert st['selected'] == 16 and st['by_language']['en'] == 8
    shard = tmp_path/'m'/st['materialized']['shards'][0]
    rep = json.loads(pangea('data', 'validate', shard, '--root', tmp_path/'m', '--json').stdout)
    assert rep['total'] == 16 and rep['rejected'] == 0
