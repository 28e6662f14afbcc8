"""Model and training end to end: DeepSpeed on 2 processes, SIGKILL + resume, freezing, bad samples, CLI, export."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import ROOT, BIN

def pangea(*args, check=True, timeout=600, env=None):
    r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and r.returncode: raise AssertionError(f'pangea {args} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}')
    return r

def run_config(tmp_path, name='run.yaml', **train):
    "A tiny stage-2 run on the synthetic world (two languages), written as a YAML file."
    from pangea_nb.config import RunConfig
    cfg = RunConfig.preset('tiny', output_dir=str(tmp_path/'out'))
    cfg = cfg.replace(data=cfg.data.replace(n_samples=96, synth_langs=['en', 'sw'], english_ratio=None),
                      train=cfg.train.replace(**{**dict(max_steps=6, micro_batch_size=4, lr=2e-3, log_every=1, warmup_ratio=0.2,
                                                        threads=1), **train}))
    return cfg.save(tmp_path/name), cfg

def losses(run_dir):
    from pangea_nb.contracts import read_jsonl
    return [(r['step'], r['loss'], r['grad_norm']) for r in read_jsonl(Path(run_dir)/'train_log.jsonl') if r['phase'] == 'train']

# ---------------------------------------------------------------- DeepSpeed, 2 processes

@pytest.mark.slow
def test_torchrun_deepspeed_zero2_two_processes(tmp_path, tiny_checkpoint):
    """2 processes under torchrun, DeepSpeed ZeRO-2 over gloo: replicas identical, consolidated model loads, and a resume
    from the step-3 checkpoint reproduces steps 4-6 of the same run."""
    path, cfg = run_config(tmp_path, zero_stage=2, save_every=3, grad_accum=2)
    r = pangea('train', path, '--nproc', 2, '--no-progress')
    out = tmp_path/'out'
    done = json.loads((out/'done.json').read_text())
    assert done['world_size'] == 2 and done['step'] == 6 and done['micro_batches'] == 6 * 2 * 2
    assert len(done['param_digests']) == 2 and len(set(done['param_digests'])) == 1      # both ranks hold the same weights
    from pangea_nb.model.build import load_pretrained
    from pangea_nb.train.loop import param_digest
    model, proc = load_pretrained(out)                               # consolidated from the ZeRO shards
    assert param_digest(model) == done['param_digests'][0]
    first = losses(out)
    assert [s for s, _, _ in first] == list(range(1, 7))
    # resume: pretend the run died after its step-3 checkpoint
    import shutil
    for p in ('done.json', 'model'): shutil.rmtree(out/p) if (out/p).is_dir() else (out/p).unlink()
    shutil.rmtree(out/'checkpoints'/'final')
    assert sorted(p.name for p in (out/'checkpoints').iterdir()) == ['step-0000003']
    pangea('train', path, '--nproc', 2, '--no-progress')
    assert losses(out) == first                                      # steps 4-6 redone bit for bit
    assert json.loads((out/'done.json').read_text())['param_digests'] == done['param_digests']

@pytest.mark.slow
def test_torchrun_deepspeed_zero3_matches_zero2_and_resumes(tmp_path, tiny_checkpoint):
    """ZeRO-3 (parameters partitioned across the 2 ranks) trains the same model as ZeRO-2: same losses and, once its
    shards are consolidated, the same weights up to float rounding; a resume from its step-3 checkpoint redoes 4-6."""
    import shutil
    from pangea_nb.model.build import load_pretrained
    runs = {}
    for z in (3, 2):
        (tmp_path/f'z{z}').mkdir()
        path, _ = run_config(tmp_path/f'z{z}', zero_stage=z, save_every=3, grad_accum=2)
        pangea('train', path, '--nproc', 2, '--no-progress')
        runs[z] = (path, tmp_path/f'z{z}'/'out')
    (_, o3), (_, o2) = runs[3], runs[2]
    done = json.loads((o3/'done.json').read_text())
    assert done['world_size'] == 2 and done['step'] == 6 and done['param_digests'] == []   # ZeRO-3 ranks hold shards only
    l3, l2 = losses(o3), losses(o2)
    assert [s for s, _, _ in l3] == list(range(1, 7))
    assert all(abs(a[1] - b[1]) <= 1e-5 * abs(b[1]) and abs(a[2] - b[2]) <= 1e-4 * abs(b[2]) for a, b in zip(l3, l2)), (l3, l2)
    m3, _ = load_pretrained(o3); m2, _ = load_pretrained(o2)             # the ZeRO-3 model is consolidated from its shards
    p3, p2 = dict(m3.named_parameters()), dict(m2.named_parameters())
    assert p3.keys() == p2.keys()
    assert max((p3[k] - p2[k]).abs().max().item() for k in p3) < 1e-4
    for p in ('done.json', 'model'): shutil.rmtree(o3/p) if (o3/p).is_dir() else (o3/p).unlink()
    shutil.rmtree(o3/'checkpoints'/'final')
    assert sorted(p.name for p in (o3/'checkpoints').iterdir()) == ['step-0000003']
    pangea('train', runs[3][0], '--nproc', 2, '--no-progress')
    again = losses(o3)
    assert again[:3] == l3[:3] and all(abs(a[1] - b[1]) <= 1e-6 * abs(b[1]) for a, b in zip(again, l3)), (again, l3)

# ---------------------------------------------------------------- SIGKILL + resume

@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path, tiny_checkpoint):
    path, cfg = run_config(tmp_path, max_steps=40, save_every=10)
    ref_path, _ = run_config(tmp_path/'ref', max_steps=40, save_every=10)
    pangea('train', ref_path, '--no-progress')                       # the uninterrupted run
    proc = subprocess.Popen([str(BIN/'pangea'), 'train', str(path), '--no-progress'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log, t0 = tmp_path/'out'/'train_log.jsonl', time.time()
    while time.time() - t0 < 300:                                    # kill after the step-10 checkpoint, mid-way to 20
        rows = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
        if rows and rows[-1]['step'] >= 13: break
        if proc.poll() is not None: pytest.fail(f'training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}')
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (tmp_path/'out'/'done.json').exists()
    killed_at = losses(tmp_path/'out')[-1][0]
    assert 13 <= killed_at < 40
    pangea('train', path, '--no-progress')                           # resumes from the newest complete checkpoint
    assert losses(tmp_path/'out') == losses(tmp_path/'ref'/'out')    # same loss and grad norm at every step

# ---------------------------------------------------------------- freezing

@pytest.mark.parametrize('over,trained', [({'stage': 0}, {'lm'}), ({'stage': 1}, {'projector'}),
                                          ({'stage': 2}, {'projector', 'lm'}), ({'stage': 2, 'vision_lr': 1e-3}, {'projector', 'lm', 'vision'}),
                                          ({'stage': 2, 'freeze_lm': True}, {'projector'})])
def test_stage_freezing_parameter_by_parameter(tmp_path, tiny_checkpoint, over, trained):
    "Every parameter moves iff its component is trained by the stage; frozen ones stay bit-identical."
    from pangea_nb.config import RunConfig
    from pangea_nb.model.build import load_pretrained, component_of
    from pangea_nb.train.loop import Trainer
    from pangea_nb.train.stages import stage_data
    _, cfg = run_config(tmp_path, max_steps=2, lr=1e-2, **over)
    model, proc = load_pretrained(tiny_checkpoint, dtype='float32'); model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    samples, images = stage_data(cfg)
    Trainer(cfg, model, proc, samples[:16], images=images, out_dir=tmp_path/'out').fit(progress=False)
    # LLaVA reads the penultimate vision layer: the last layer and the post-norm never get a gradient, so never move
    vc = model.config.vision_config
    last_used = vc.num_hidden_layers + 1 + model.config.vision_feature_layer      # hidden_states[k] = output of layer k-1
    unused = lambda n: 'post_layernorm' in n or any(f'encoder.layers.{i}.' in n for i in range(last_used, vc.num_hidden_layers))
    seen = set()
    for n, p in model.named_parameters():
        comp = component_of(n); seen.add(comp)
        assert p.requires_grad == (comp in trained), n
        moved = not torch.equal(p, before[n])
        assert moved == (comp in trained and not (comp == 'vision' and unused(n))), f'{n} ({comp}) moved={moved}'
    assert seen == {'vision', 'projector', 'lm'}

# ---------------------------------------------------------------- bad samples

def _bad_release(tmp_path, shared):
    "Two real PangeaIns records plus a corrupt image and an over-long conversation, as a LLaVA file."
    import shutil
    src = json.loads((shared/'data/pangeains-sample/sample_data.json').read_text())
    short = lambda r: sum(len(t['value']) for t in r['conversations']) < 700          # well under max_length=512 tokens
    recs = [r for r in src if 'image' in r and len(r['conversations']) == 2 and short(r)][:6]
    assert len(recs) == 6
    for r in recs:
        (tmp_path/r['image']).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared/'data/pangeains-sample'/r['image'], tmp_path/r['image'])
    (tmp_path/'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 64)
    recs.append({'id': 'corrupt-1', 'image': 'corrupt.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nWhat is shown?'}, {'from': 'gpt', 'value': 'A cat.'}]})
    recs.append({'id': 'long-1', 'image': recs[0]['image'], 'conversations': [
        {'from': 'human', 'value': '<image>\n' + 'Describe every detail. ' * 400}, {'from': 'gpt', 'value': 'Fine.'}]})
    (tmp_path/'data.json').write_text(json.dumps(recs))
    return tmp_path/'data.json', len(recs)

def test_corrupt_image_and_overlong_sample_are_counted_skips(tmp_path, shared, tiny_checkpoint):
    from pangea_nb.config import RunConfig
    from pangea_nb.contracts import read_jsonl
    data, n = _bad_release(tmp_path, shared)
    cfg = RunConfig.preset('tiny', output_dir=str(tmp_path/'out'))
    cfg = cfg.replace(data=cfg.data.replace(pools=[{'kind': 'llava', 'id': 'real', 'path': str(data)}]),
                      train=cfg.train.replace(max_steps=1, micro_batch_size=n, max_length=512, overlong='drop', init_from=str(tiny_checkpoint)))
    cfg.save(tmp_path/'run.yaml')
    pangea('train', tmp_path/'run.yaml', '--no-progress')
    # the corrupt image is refused when the pool is indexed (the shared ImageChecker reads its header), the over-long
    # sample when its batch is built: one counted reject each, in the run's two rejects files
    data_rej = {r['id']: r for r in read_jsonl(tmp_path/'out'/'data_rejects.jsonl')}
    rej = {r['id']: r for r in read_jsonl(tmp_path/'out'/'rejects.jsonl')}
    assert set(data_rej) == {'corrupt-1'} and set(rej) == {'long-1'}
    assert data_rej['corrupt-1']['field'] == 'image' and data_rej['corrupt-1']['code'] != 'ok'
    assert 'max_length=512' in rej['long-1']['reason']
    done = json.loads((tmp_path/'out'/'done.json').read_text())
    assert done['skipped'] == 1 and done['samples'] == n - 2
    assert json.loads((tmp_path/'out'/'data.json').read_text())['rejected'] == 1
    # bad_samples: error stops at the corrupt image with one line naming record and field
    recs = [r for r in json.loads(data.read_text()) if r['id'] != 'long-1']; (tmp_path/'strict.json').write_text(json.dumps(recs))
    cfg.replace(output_dir=str(tmp_path/'out2'), train=cfg.train.replace(bad_samples='error'),
                data=cfg.data.replace(pools=[{'kind': 'llava', 'id': 'real', 'path': str(tmp_path/'strict.json')}])).save(tmp_path/'strict.yaml')
    r = pangea('train', tmp_path/'strict.yaml', '--no-progress', check=False)
    assert r.returncode == 1 and 'record corrupt-1, field image' in r.stderr and 'Traceback' not in r.stderr

def test_truncation_is_counted(tmp_path, tiny_checkpoint):
    "With overlong: truncate, long samples are cut (never inside the image) and counted in the log."
    from pangea_nb.contracts import read_jsonl
    from pangea_nb.model.build import load_pretrained
    from pangea_nb.train.loop import Trainer
    from pangea_nb.train.stages import stage_data
    from pangea_nb.data.schema import Turn
    _, cfg = run_config(tmp_path, max_steps=2, max_length=60, overlong='truncate')
    model, proc = load_pretrained(tiny_checkpoint, dtype='float32')
    samples, images = stage_data(cfg)
    for s in samples[:8]:              # multi-turn: the first reply fits, later turns are cut
        s.turns = s.turns + [Turn('user', 'Say it again, please.'), Turn('assistant', s.turns[1].text)] * 4
    Trainer(cfg, model, proc, samples[:8], images=images, out_dir=tmp_path/'out').fit(progress=False)
    log = read_jsonl(tmp_path/'out'/'train_log.jsonl')
    assert log[-1]['truncated'] > 0 and json.loads((tmp_path/'out'/'done.json').read_text())['truncated'] == log[-1]['truncated']

# ---------------------------------------------------------------- CLI, contract, export

def test_pangea_train_stages_cli_writes_run_and_loads_offline(tmp_path):
    "Stages 0-2 from one YAML through `pangea train`; the final model loads in plain transformers, offline, no remote code."
    from pangea_nb.config import RunConfig
    cfg = RunConfig.preset('tiny', output_dir=str(tmp_path/'run'),
                           stages=[{'train.stage': 0}, {'train.stage': 1, 'train.lr': 3e-3}, {'train.stage': 2}])
    cfg = cfg.replace(data=cfg.data.replace(n_samples=64, synth_langs=['en', 'zh'], english_ratio=None),
                      train=cfg.train.replace(max_steps=3, micro_batch_size=8, log_every=1, threads=1))
    cfg.save(tmp_path/'stages.yaml')
    pangea('train', tmp_path/'stages.yaml', '--no-progress')
    run = tmp_path/'run'
    st = json.loads((run/'stages.json').read_text())
    assert [s['stage'] for s in st['stages']] == [0, 1, 2] and st['final_model'] == 'stage2/model'
    for k in range(3):
        assert (run/f'stage{k}'/'done.json').exists() and (run/f'stage{k}'/'figures'/'loss.png').exists()
        assert len((run/f'stage{k}'/'train_log.jsonl').read_text().splitlines()) == 3
    assert (run/'figures'/'loss.png').exists() and (run/'figures'/'loss.csv').exists()
    assert (run/'stage0'/'backbone'/'config.json').exists()
    code = ("import sys, torch; from transformers import LlavaForConditionalGeneration, AutoProcessor, AutoModelForCausalLM;"
            "m = LlavaForConditionalGeneration.from_pretrained(sys.argv[1], trust_remote_code=False);"
            "p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=False);"
            "lm = AutoModelForCausalLM.from_pretrained(sys.argv[2], trust_remote_code=False);"
            "print(type(m).__name__, type(p).__name__, p.tokenizer.image_token, type(lm).__name__)")
    r = subprocess.run([sys.executable, '-c', code, str(run/'stage2'/'model'), str(run/'stage0'/'backbone')], capture_output=True,
                       text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ['LlavaForConditionalGeneration', 'LlavaProcessor', '<image>', 'Qwen2ForCausalLM']
    # a finished run is skipped, not retrained
    t0 = time.time(); pangea('train', tmp_path/'stages.yaml', '--no-progress'); assert time.time() - t0 < 60

def test_tiny_checkpoint_contract(tiny_checkpoint):
    "The shared fixture: an HF folder, loadable through load_pretrained; the preset path uses the same cached tokenizer."
    from pangea_nb.model.build import load_pretrained
    from PIL import Image
    names = {p.name for p in Path(tiny_checkpoint).iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'chat_template.jinja', 'processor_config.json'} <= names
    model, proc = load_pretrained(tiny_checkpoint)
    fresh, fproc = load_pretrained('tiny')
    assert fproc.tokenizer.get_vocab() == proc.tokenizer.get_vocab()
    text = proc.apply_chat_template([{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'What colour?'}]}],
                                    add_generation_prompt=True, tokenize=False)
    enc = proc(text=[text], images=[Image.new('RGB', (64, 64), 'red')], return_tensors='pt')
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > enc['input_ids'].shape[1]

def test_model_export_bf16_and_info(tmp_path, tiny_checkpoint):
    r = pangea('model', 'export', tiny_checkpoint, tmp_path/'bf16', '--dtype', 'bfloat16')
    from transformers import LlavaForConditionalGeneration
    m = LlavaForConditionalGeneration.from_pretrained(tmp_path/'bf16')
    assert m.dtype == torch.bfloat16
    info = json.loads(pangea('model', 'info', 'small', '--n-gpus', 2, '--json').stdout)
    assert 10e6 < info['params']['total'] < 100e6
    z = {int(k): v['gpu_bytes'] for k, v in info['zero_memory'].items()}
    assert z[0] > z[1] > z[2] > z[3]

def test_llava_next_anyres_trains_on_real_images(tmp_path, shared, tiny_checkpoint):
    "The anyres path: real PangeaIns images of mixed sizes, tiles padded per batch, two stage-2 steps, saved and reloaded."
    from pangea_nb.config import RunConfig, ModelConfig
    from pangea_nb.contracts import read_jsonl
    from pangea_nb.data.schema import read_samples
    from pangea_nb.model.build import build_model, build_processor, model_tokenizer, load_pretrained
    from pangea_nb.model.collate import ImageFolder
    from pangea_nb.train.loop import Trainer
    root = shared/'data/pangeains-sample'
    samples = [s for s in read_samples(root/'sample_data.json', source='pangeains') if s.images and len(s.turns) == 2][:8]
    mc = ModelConfig.preset('tiny-next')
    tok = model_tokenizer(mc)
    cfg = RunConfig.preset('tiny', model=mc.to_dict(), output_dir=str(tmp_path/'out'))
    cfg = cfg.replace(train=cfg.train.replace(max_steps=2, micro_batch_size=4, max_length=4096, log_every=1))
    model, proc = build_model(mc, tok), build_processor(mc, tok)
    Trainer(cfg, model, proc, samples, images=ImageFolder(root), out_dir=tmp_path/'out').fit(progress=False)
    log = read_jsonl(tmp_path/'out'/'train_log.jsonl')
    assert len(log) == 2 and all(r['targets'] > 0 for r in log) and log[-1]['skipped'] == 0
    m, p = load_pretrained(tmp_path/'out')
    assert type(m).__name__ == 'LlavaNextForConditionalGeneration' and type(p).__name__ == 'LlavaNextProcessor'
