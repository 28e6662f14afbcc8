"""Evaluation through a real `pangea serve` process on 127.0.0.1: a generate task and a multiple-choice task in both
modes, an item with two images (MaRVL), parity with in-process predictions of the same checkpoint, and a rerun that
the reply cache answers with no request reaching the server."""
import json, random, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import pangea_serve
from tiny_llava import build_tiny_llava
from test_eval import write_xcopa, write_marvl
from pangea_nb.cli import main as pangea_main
from pangea_nb.contracts import read_jsonl

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def cli(capsys, *argv):
    code = pangea_main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp('served')
    rng = random.Random(0)
    write_xcopa(d / 'xcopa', rng)
    write_marvl(d / 'marvl', rng, d / 'marvl_images')
    build_tiny_llava(d / 'ckpt')
    return d, d / 'ckpt'


@pytest.fixture(scope='module')
def server(world):
    with pangea_serve(world[1]) as url: yield url


def preds(path): return {r['id']: r['prediction'] for r in read_jsonl(path)}


@pytest.mark.parametrize('task,mode,limit', [('xcopa', 'generate', 2), ('xcopa', 'loglik', 2), ('marvl', 'generate', 1)])
def test_served_matches_in_process(task, mode, limit, world, server, tmp_path, capsys):
    d, ck = world
    base = ['eval', 'run', '--task', task, '--data', d / task, '--mode', mode, '--limit', limit, '--max-new-tokens', 4, '--no-cache']
    if task == 'marvl': base += ['--images', d / 'marvl_images']
    assert cli(capsys, *base, '--model', ck, '--out', tmp_path / 'local.jsonl')[0] == 0
    code, _, err = cli(capsys, *base, '--model', server, '--tokenizer', ck, '--out', tmp_path / 'served.jsonl')
    assert code == 0, err
    a, b = preds(tmp_path / 'local.jsonl'), preds(tmp_path / 'served.jsonl')
    assert len(a) == limit * {'xcopa': 5, 'marvl': 6}[task] and a == b                        # greedy on CPU: the served model agrees exactly
    if task == 'marvl':                                           # both images of every item travelled
        from pangea_nb.eval.tasks import get_task, select_items, resolve_images
        t = get_task('marvl')
        items, _ = resolve_images(t, select_items(t, d / 'marvl', limit=limit), d / 'marvl_images')
        assert {it.id for it in items} == set(b) and all(len(it.image_paths) == 2 for it in items)
    if mode == 'loglik':
        la = {r['id']: r['scores'] for r in read_jsonl(tmp_path / 'local.jsonl')}
        lb = {r['id']: r['scores'] for r in read_jsonl(tmp_path / 'served.jsonl')}
        assert all(abs(la[i][o] - lb[i][o]) < 1e-3 for i in la for o in la[i])
    meta = json.loads((tmp_path / 'served.jsonl.meta.json').read_text())
    assert meta['identity']['endpoint'] == server and meta['identity']['revision'] and meta['model'] == meta['identity']['model']


def test_loglik_needs_tokenizer(world, server, tmp_path, capsys):
    d, _ = world
    code, _, err = cli(capsys, 'eval', 'run', '--task', 'xcopa', '--data', d / 'xcopa', '--model', server, '--mode', 'loglik',
                       '--limit', 1, '--no-cache', '--out', tmp_path / 'p.jsonl')
    assert code == 1 and '--tokenizer' in err


def test_rerun_hits_the_cache(world, server, tmp_path, capsys, monkeypatch):
    d, ck = world
    args = ['eval', 'run', '--task', 'xcopa', '--data', d / 'xcopa', '--model', server, '--limit', 2, '--max-new-tokens', 4,
            '--cache', tmp_path / 'cache']
    assert cli(capsys, *args, '--out', tmp_path / 'a.jsonl')[0] == 0
    import httpx
    sent = []
    real = httpx.Client.post
    monkeypatch.setattr(httpx.Client, 'post', lambda self, url, **kw: sent.append(url) or real(self, url, **kw))
    assert cli(capsys, *args, '--out', tmp_path / 'b.jsonl')[0] == 0      # a new predictions file, the same prompts
    assert sent == [] and preds(tmp_path / 'a.jsonl') == preds(tmp_path / 'b.jsonl')
    code, _, err = cli(capsys, *args, '--out', tmp_path / 'c.jsonl', '--no-cache')
    assert code == 0 and len(sent) == 10                                    # --no-cache asks the server again


def test_parity_command(world, server, tmp_path, capsys):
    d, ck = world
    code, out, err = cli(capsys, 'eval', 'parity', '--task', 'xcopa', '--data', d / 'xcopa', '--model', ck, '--against', server,
                         '--limit', 2, '--max-new-tokens', 4, '--n-boot', 200, '--json')
    assert code == 0, err
    rep = json.loads(out)
    assert rep['identical_share'] == 1.0 and rep['n'] == 10 and rep['a']['backend'] == 'in-process' and rep['b']['backend'] == 'http'
    assert all(v['score_diff']['diff'] == 0.0 and not v['score_diff']['significant'] for v in rep['by_lang'].values())


def test_backend_yaml_through_the_same_layer(world, server, tmp_path, capsys):
    "A backend spec file (the data stages' Backend layer) names the server: same predictions as the URL."
    d, ck = world
    spec = tmp_path / 'backend.yaml'
    spec.write_text(f'kind: http\nendpoints: [{server}]\nconcurrency: 2\ntimeout: 60\n')
    args = ['eval', 'run', '--task', 'xcopa', '--data', d / 'xcopa', '--limit', 1, '--max-new-tokens', 4, '--no-cache']
    assert cli(capsys, *args, '--model', spec, '--out', tmp_path / 'yaml.jsonl')[0] == 0
    assert cli(capsys, *args, '--model', server, '--out', tmp_path / 'url.jsonl')[0] == 0
    assert preds(tmp_path / 'yaml.jsonl') == preds(tmp_path / 'url.jsonl')
