"""A corpus of bad inputs goes once through validate, mix, materialize and a 2-step train: no traceback, every bad
record in a rejects file with a reason, records in = kept + rejected for each command."""
import json, os, subprocess
from pathlib import Path
import pytest
from conftest import BIN, env1

def pangea(*args, timeout=300):
    r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env1())
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr[-3000:]
    assert r.returncode == 0, f'pangea {args} exited {r.returncode}: {r.stderr[-2000:]}'
    return r

CONV = [{'from': 'human', 'value': '<image>\nWhat colour is it?'}, {'from': 'gpt', 'value': 'Blue.'}]
TEXT = [{'from': 'human', 'value': 'Say hello.'}, {'from': 'gpt', 'value': 'Hello.'}]

def make_corpus(d:Path) -> dict:
    """Two files (JSONL and a JSON array) under `d` with 60 distinct bad inputs (55 + 5) among 13 good records.

    Returns {file name: (number of records, set of indices of the bad ones, ids of bad records only a decode can find)}."""
    import io, struct, zlib
    from PIL import Image
    im = d/'images'; im.mkdir(parents=True)
    for i in range(12): Image.new('RGB', (16, 16), (20 * i, 80, 200)).save(im/f'ok{i}.png')
    (im/'zero.png').write_bytes(b''); (im/'junk.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 64); (im/'dir.png').mkdir()
    b = io.BytesIO(); Image.new('RGB', (1, 1)).save(b, 'PNG'); raw = bytearray(b.getvalue())
    ihdr = b'IHDR' + struct.pack('>II', 100_000, 100_000) + bytes(raw[24:29]); raw[12:29] = ihdr; raw[29:33] = struct.pack('>I', zlib.crc32(ihdr))
    (im/'bomb.png').write_bytes(bytes(raw))
    os.symlink(im/'loop-b', im/'loop-a'); os.symlink(im/'loop-a', im/'loop-b')
    (d.parent/'outside.png').write_bytes((im/'ok0.png').read_bytes()); os.symlink(d.parent/'outside.png', im/'out.png')
    R = lambda id, img='images/ok0.png', **kw: json.dumps({'id': id, 'image': img, 'language': 'en', 'conversations': CONV, **kw}).encode()
    good = lambda i: R(f'good{i}', f'images/ok{i}.png')
    bad = [  # one line each
        b'{"id": "latin1", "language": "en", "conversations": [{"from": "gpt", "value": "caf\xe9"}]}',   # not UTF-8
        b'{"id": "torn", "conversations": [',                                   # malformed JSON
        b'[' * 5000 + b']' * 5000,                                              # 5,000 levels deep
        R('deep', meta={'a': json.loads('{"b": ' * 70 + '1' + '}' * 70)}),      # deeper than MAX_DEPTH, parseable
        b'{"id": "surrogate", "conversations": [{"from": "gpt", "value": "\\udc80"}]}',  # lone surrogate escape
        b'"a string"', b'42', b'null', b'[1, 2]',                               # not an object
        b'{"id": NaN, "conversations": []}',                                    # NaN id
        b'{"id": "x", ' + b'"pad": "' + b'x' * (17 << 20) + b'"}',              # line longer than 16 MiB
        R({'a': 1}), R(True), R(['l']), R(None), R(''), R('   '), R(1.5e300 * 1e10),   # ids: dict, bool, list, null, empty, blank, inf
        R('meta-str', meta='m'), R('meta-list', meta=[1]), R('prov-str', provenance='p'), R('prov-list', provenance=[]),
        R('source-int', source=7), R('source-list', source=['s']), R('task-dict', task={}), R('task-int', task=3),
        R('split-int', split=1), R('lang-int', language=5), R('plang-list', prompt_language=['en']), R('meta-null', meta=None),
        json.dumps({'id': 'no-conv', 'image': 'images/ok0.png'}).encode(), R('conv-empty', conversations=[]),
        R('conv-str', conversations='hi'), R('turn-str', conversations=['hi']), R('from-bot', conversations=[{'from': 'bot', 'value': 'x'}]),
        R('from-list', conversations=[{'from': ['human'], 'value': 'x'}]), R('value-int', conversations=[{'from': 'human', 'value': 1}]),
        R('image-int', img=3), R('image-list-int', img=[1]),
        R('empty-reply', conversations=[CONV[0], {'from': 'gpt', 'value': ' '}]), R('wrong-order', conversations=CONV[::-1]),
        R('no-marker', conversations=TEXT), R('lang-xx', language='xx'),
        R('img-missing', 'images/nope.png'), R('img-zero', 'images/zero.png'), R('img-dir', 'images/dir.png'),
        R('img-loop', 'images/loop-a'), R('img-dotdot', '../outside.png'), R('img-abs', '/etc/hosts'), R('img-link-out', 'images/out.png'),
        R('img-long', 'images/' + 'x' * 300 + '.png'), R('img-nul', 'images/a\x00b.png'), R('img-bomb', 'images/bomb.png'),
        R('img-junk', 'images/junk.png'), R('good0', 'images/ok1.png')]                 # the last: a repeated id (good0 is first)
    lines = [b'\xef\xbb\xbf' + good(0)] + [good(i) for i in range(1, 11)]
    bad_at = set()
    for k, line in enumerate(bad):      # interleave: bad lines between good ones (the duplicate comes after good0)
        lines.insert(2 + 2 * k if 2 + 2 * k < len(lines) else len(lines), line)
    bad_at = {i for i, l in enumerate(lines) if l in bad}
    (d/'bad.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
    # a JSON array (BOM; bad bytes, too deep and non-object elements; a duplicate; a torn tail that ends the array)
    arr = [good(11), b'{"id": "arr-latin1", "x": "\xff"}', b'7', R('arr-deep', meta=json.loads('[' * 70 + ']' * 70)),
           R('good11', 'images/ok2.png'), json.dumps({'id': 'good-text', 'language': 'en', 'conversations': TEXT}).encode(), b'{"id": "cut", "conv']
    (d/'bad.json').write_bytes(b'\xef\xbb\xbf[' + b',\n'.join(arr))
    return {'bad.jsonl': (len(lines), bad_at, {'img-bomb', 'img-junk'}), 'bad.json': (len(arr), {1, 2, 3, 4, 6}, set())}

KINDS = {'not_utf8', 'malformed_json', 'too_deep', 'line_too_long', 'wrong_type', 'missing_id', 'unknown_speaker', 'duplicate_id',
         'empty_reply', 'turn_order', 'image_marker_mismatch', 'unknown_language', 'image_missing', 'image_empty', 'image_not_a_file',
         'image_symlink_loop', 'image_unsafe_path', 'image_bad_name', 'image_too_large', 'image_undecodable'}

def test_bad_corpus_through_validate_mix_materialize_train(tmp_path):
    from pangea_nb.config import DataConfig, RunConfig
    from pangea_nb.contracts import read_jsonl
    d = tmp_path/'corpus'; d.mkdir()
    files = make_corpus(d)
    n_in = {f: n for f, (n, _, _) in files.items()}
    assert sum(len(b) for _, b, _ in files.values()) == 60        # distinct bad inputs (at least 40 asked)
    n_good = sum(n - len(b) for n, b, _ in files.values())
    # validate: each file on its own
    for f, (n, bad, _) in files.items():
        r = pangea('data', 'validate', d/f, '--json', '--rejects', tmp_path/f'{f}.rejects.jsonl')
        rep = json.loads(r.stdout)
        assert (rep['total'], rep['valid'], rep['rejected']) == (n, n - len(bad), len(bad)), (f, rep['by_reason'])
        rows = read_jsonl(tmp_path/f'{f}.rejects.jsonl')
        assert {r['index'] for r in rows} == bad and all(r['reason'] and r['code'] for r in rows)
        assert rep['rejects'] == str(tmp_path/f'{f}.rejects.jsonl') and sum(rep['by_reason'].values()) == len(bad)
        if f == 'bad.jsonl': assert set(rep['by_reason']) >= KINDS, KINDS - set(rep['by_reason'])
    # mix: both files as pools; it selects every usable record, rejects the rest
    DataConfig(n_samples=n_good, english_ratio=1.0, seed=0, pools=[
        {'id': 'l', 'kind': 'llava', 'path': str(d/'bad.jsonl')}, {'id': 'a', 'kind': 'llava', 'path': str(d/'bad.json')}]).save(tmp_path/'mix.yaml')
    out = tmp_path/'mix'
    st = json.loads(pangea('data', 'mix', tmp_path/'mix.yaml', '--out', out, '--json').stdout)
    mixed = read_jsonl(out/'rejects.jsonl')
    assert (st['total'], st['valid'], st['rejected'], st['selected']) == (sum(n_in.values()), n_good, len(mixed), n_good)
    assert st['rejects'] == str(out/'rejects.jsonl') and all(r['reason'] and r['stage'] == 'mix' for r in mixed)
    for pid, f in (('l', 'bad.jsonl'), ('a', 'bad.json')):
        assert {r['index'] for r in mixed if r['pool'] == pid} == files[f][1], pid
    console = pangea('data', 'mix', tmp_path/'mix.yaml', '--out', tmp_path/'mix2').stdout
    assert f"{sum(n_in.values())} records in, {n_good} kept, {len(mixed)} rejected" in console and str(tmp_path/'mix2'/'rejects.jsonl') in console
    # materialize: two images broken after the mix are skipped and counted, never an abort
    (d/'images'/'ok3.png').unlink(); (d/'images'/'ok4.png').unlink(); (d/'images'/'ok4.png').mkdir()
    res = json.loads(pangea('data', 'materialize', out, '--json').stdout)
    assert (res['total'], res['valid'], res['rejected']) == (n_good, n_good - 2, 2)
    assert res['by_reason'] == {'image_missing': 1, 'image_not_a_file': 1}
    rows = read_jsonl(out/'rejects.jsonl')
    assert len(rows) == len(mixed) + 2 and {r['id'] for r in rows if r['stage'] == 'materialize'} == {'good3', 'good4'}
    assert sum(1 for f in res['shards'] for _ in open(out/f)) == n_good - 2
    console = pangea('data', 'materialize', out).stdout
    assert f'{n_good} records in, {n_good - 2} kept, 2 rejected' in console
    # a 2-step train on both files: the pools are indexed with the image checker (nbs/19_pool_index), so bad records
    # and images whose header is not an image (the bomb, the junk bytes) are rejected when the pool is read
    cfg = RunConfig.preset('tiny', output_dir=str(tmp_path/'run'))
    cfg = cfg.replace(data=cfg.data.replace(pools=[{'kind': 'llava', 'id': 'l', 'path': str(d/'bad.jsonl')},
                                                   {'kind': 'llava', 'id': 'a', 'path': str(d/'bad.json')}]),
                      train=cfg.train.replace(max_steps=2, micro_batch_size=32, max_length=256, eval_every=0, log_every=1))
    cfg.save(tmp_path/'run.yaml')
    pangea('train', tmp_path/'run.yaml', '--no-progress', timeout=600)
    run = tmp_path/'run'
    data = json.loads((run/'data.json').read_text())
    read_rej = read_jsonl(run/'data_rejects.jsonl')
    n_decode = sum(len(x) for _, _, x in files.values())
    assert data['total'] == sum(n_in.values()) and data['valid'] + data['rejected'] == data['total']
    assert n_decode == 2 and data['rejected'] == len(read_rej) == sum(len(b) for _, b, _ in files.values()) + 2   # ok3, ok4 broken since
    assert {'img-bomb', 'img-junk'} <= {r.get('id') for r in read_rej}
    trained = {r['id'] for r in read_jsonl(run/'rejects.jsonl')} if (run/'rejects.jsonl').exists() else set()
    assert trained == set(), trained                     # nothing left for the batch builder to skip
    assert json.loads((run/'done.json').read_text())['step'] == 2
    assert all(r['reason'] for r in read_rej)

def test_a_folder_given_as_data_is_one_line(tmp_path):
    (tmp_path/'d.jsonl').mkdir()
    r = subprocess.run([str(BIN/'pangea'), 'data', 'validate', str(tmp_path/'d.jsonl')], capture_output=True, text=True, env=env1())
    assert r.returncode == 1 and 'is a directory' in r.stderr and 'Traceback' not in r.stderr, r.stderr
