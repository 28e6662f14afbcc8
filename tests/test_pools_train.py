"""Real pools straight into `pangea train`: the release layouts as pools, the on-disk index reused and rebuilt, and the lazy
path giving the samples and lengths of the old list path."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent

def pangea(*args, check=True, timeout=600):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode: raise AssertionError(f'pangea {args} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}')
    return r

@pytest.fixture
def releases(tmp_path):
    "A PangeaInstruct and a LLaVA-Pretrain download in their official layouts (the project's miniatures), archives extracted."
    from pangea_nb.data.releases import make_pangeains_layout, make_llava_pretrain_layout, extract_archives, extract_llava_pretrain
    pi, lp = make_pangeains_layout(tmp_path/'PangeaInstruct', n_per=3), make_llava_pretrain_layout(tmp_path/'LLaVA-Pretrain', n=6)
    extract_archives(pi, progress=False); extract_llava_pretrain(lp)
    return pi, lp

def tiny_run(tmp_path, pools, **train):
    from pangea_nb.config import RunConfig
    cfg = RunConfig.preset('tiny', output_dir=str(tmp_path/'run'))
    return cfg.replace(data=cfg.data.replace(pools=pools),
                       train=cfg.train.replace(**{'max_steps': 2, 'micro_batch_size': 2, 'log_every': 1, 'threads': 1, **train}))

def test_pangea_train_on_release_layouts(tmp_path, releases):
    "`pangea train` on the two official layouts as the 7B recipe chains them: stage 1 on LLaVA-Pretrain, stage 2 on PangeaInstruct."
    pi, lp = releases
    cfg = tiny_run(tmp_path, [{'id': 'pangeains', 'kind': 'pangeains', 'path': str(pi)}])
    cfg = cfg.replace(stages=[{'train.stage': 1, 'train.lr': 1e-3,
                               'data.pools': [{'id': 'lcs', 'kind': 'llava_pretrain', 'path': str(lp)}]}, {'train.stage': 2}])
    cfg.save(tmp_path/'run.yaml')
    pangea('train', tmp_path/'run.yaml', '--no-progress')
    out = tmp_path/'run'
    stages = json.loads((out/'stages.json').read_text())['stages']
    assert [s['stage'] for s in stages] == [1, 2]
    for d, n in (('stage0', 6), ('stage1', 3 * 3 + 1)):                 # every record of each release, none refused
        assert json.loads((out/d/'manifest.json').read_text())['n_samples'] == n
        assert json.loads((out/d/'data.json').read_text())['rejected'] == 0
        done = json.loads((out/d/'done.json').read_text())
        assert done['step'] == 2 and done['skipped'] == 0 and done['samples'] == 4
    from pangea_nb.model.build import load_pretrained
    load_pretrained(out)                                                 # the final model loads

def test_index_reused_then_rebuilt_when_the_file_changes(tmp_path, releases):
    "A second run over the same release reads no record to build its data; a changed PangeaIns.json is indexed again."
    from pangea_nb.train.stages import stage_data
    from pangea_nb.model.build import build_processor, model_tokenizer
    from pangea_nb.model.collate import SampleEncoder
    from pangea_nb.train.loop import encoder_key
    pi, _ = releases
    cfg = tiny_run(tmp_path, [{'id': 'pangeains', 'kind': 'pangeains', 'path': str(pi)}])
    enc = SampleEncoder(build_processor(cfg.model, model_tokenizer(cfg.model)), 512)
    samples, _ = stage_data(cfg)
    pool = samples.pools()[0]
    first = samples.lengths(enc.lengths, encoder_key(enc))
    files = {f.name: f.stat().st_mtime_ns for f in pool.cache.iterdir()}
    assert {'offsets.npy', 'meta.parquet', 'signature.json', f'lengths-{encoder_key(enc)}.npy'} <= set(files)
    again, _ = stage_data(cfg)
    calls = []
    assert again.lengths(lambda ss: calls.append(ss) or enc.lengths(ss), encoder_key(enc)).tolist() == first.tolist()
    assert calls == [] and {f.name: f.stat().st_mtime_ns for f in pool.cache.iterdir()} == files   # nothing rebuilt
    recs = json.loads((pi/'PangeaIns.json').read_text())
    recs.append({'id': 'new_0', 'conversations': [{'from': 'human', 'value': 'Hi?'}, {'from': 'gpt', 'value': 'Hello.'}], 'language': 'en'})
    (pi/'PangeaIns.json').write_text(json.dumps(recs, ensure_ascii=False))
    changed, _ = stage_data(cfg)
    assert len(changed) == len(samples) + 1 and changed[len(samples)].id == 'new_0'
    assert len(changed.lengths(enc.lengths, encoder_key(enc))) == len(changed)
    assert (pool.cache/'offsets.npy').stat().st_mtime_ns != files['offsets.npy']

def test_lazy_path_gives_the_list_paths_samples_and_lengths(tmp_path, releases):
    "The same records, in the same order, with the same fields and measured lengths as the old list reader (`read_pool_samples`)."
    from pangea_nb.train.stages import stage_data, read_pool_samples
    from pangea_nb.model.build import build_processor, model_tokenizer
    from pangea_nb.model.collate import SampleEncoder
    from pangea_nb.train.loop import encoder_key
    pi, _ = releases
    recs = json.loads((pi/'PangeaIns.json').read_text())
    recs.insert(2, {'id': 'broken', 'conversations': 'not a list'})             # refused by both, counted by both
    recs.append({'id': 'escape', 'image': '../../etc/passwd', 'conversations': recs[0]['conversations']})
    (pi/'data.json').write_text(json.dumps(recs, ensure_ascii=False))
    cfg = tiny_run(tmp_path, [{'id': 'real', 'kind': 'llava', 'path': str(pi/'data.json'), 'lang_source': 'pangeains'}])
    lazy, images = stage_data(cfg)
    old, old_rej = read_pool_samples(pi/'data.json', 'real', pi, 'pangeains', cfg.data.max_image_pixels)
    assert len(lazy) == len(old) == len(recs) - 2
    for a, b in zip(lazy[:], old):
        assert a.to_dict() == b.to_dict(), (a.id, b.id)
    assert sorted(r['id'] for r in images.rejects) == sorted(r['id'] for r in old_rej) == ['broken', 'escape']
    enc = SampleEncoder(build_processor(cfg.model, model_tokenizer(cfg.model)), 512)
    assert lazy.lengths(enc.lengths, encoder_key(enc)).tolist() == enc.lengths(old)
    assert images(lazy[0], 0).mode == 'RGB'

def test_record_unreadable_at_training_time_is_a_counted_skip(tmp_path, releases):
    "A record that breaks after indexing (the file edited under a running job) is one counted reject of the trainer, not a traceback."
    from pangea_nb.contracts import read_jsonl
    from pangea_nb.model.build import build_model, build_processor, model_tokenizer
    from pangea_nb.train.loop import Trainer
    from pangea_nb.train.stages import stage_data
    pi, _ = releases
    cfg = tiny_run(tmp_path, [{'id': 'pangeains', 'kind': 'pangeains', 'path': str(pi)}], max_steps=1, micro_batch_size=10)
    samples, images = stage_data(cfg)
    pool = samples.pools()[0]
    raw = pool.records.read_bytes(); first = raw.split(b'\n', 1)[0]
    pool.records.write_bytes(b'{' + b' ' * (len(first) - 2) + b'x' + raw[len(first):])   # same length, no longer JSON
    tok = model_tokenizer(cfg.model)
    t = Trainer(cfg, build_model(cfg.model, tok, seed=0), build_processor(cfg.model, tok), samples, images=images, out_dir=tmp_path/'out')
    t.fit(progress=False)
    rej = read_jsonl(tmp_path/'out'/'rejects.jsonl')
    assert len(rej) == 1 and 'record changed since the pool was scanned' in rej[0]['reason']
    done = json.loads((tmp_path/'out'/'done.json').read_text())
    assert done['skipped'] == 1 and done['samples'] == 9

def test_pangea_7b_preset_chains_stage_1_into_stage_2():
    "`pangea config show pangea-7b`: stage 1 on LLaVA-Pretrain (projector only, lr 1e-3, batch 128) then stage 2 on PangeaIns."
    from pangea_nb.config import RunConfig
    import yaml
    shown = pangea('config', 'show', 'pangea-7b').stdout
    cfg = RunConfig.from_dict(yaml.safe_load(shown))
    s1, s2 = cfg.stage_configs()
    assert (s1.train.stage, s1.train.lr, s1.train.micro_batch_size * s1.train.grad_accum * 8, s1.train.vision_lr) == (1, 1e-3, 128, None)
    assert [p['kind'] for p in s1.data.pools] == ['llava_pretrain']
    assert (s2.train.stage, s2.train.lr, s2.train.vision_lr, s2.train.micro_batch_size * s2.train.grad_accum * 8) == (2, 2e-5, 2e-6, 512)
    assert [p['kind'] for p in s2.data.pools] == ['pangeains'] and s2.data.english_ratio == 0.4
