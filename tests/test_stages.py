"""Model-backed data stages end to end: QC on garbage, a real `pangea serve` process, a misbehaving server, SIGKILL
and resume, the synthetic world (oracle) and the real PangeaIns sample (random-weight backends)."""
import http.server, json, os, signal, socketserver, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path
import pytest
from conftest import env1, pangea_serve

BIN = Path(sys.executable).parent
QC_REASONS = {'wrong_language', 'repetition', 'length_ratio', 'empty', 'placeholders', 'numbers', 'untranslated', 'untranslated_words'}
SOURCE_REASONS = {'no_source_language', 'already_target_language', 'duplicate_id', 'unknown_source_language', 'unreadable_record'}




pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    from pangea_nb.backends.local import build_tiny_mt, build_tiny_llava
    d = tmp_path_factory.mktemp('models')
    return {'nllb': build_tiny_mt(d/'nllb', 'nllb'), 'llava': build_tiny_llava(d/'llava')}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    from pangea_nb.data.synth import write_world, WorldConfig
    from pangea_nb.data.schema import read_samples, write_samples
    from pangea_nb.backends.oracle import synthetic_alt_text_pool
    d = tmp_path_factory.mktemp('world')
    write_world(d, WorldConfig(n_train=240, n_test=40, langs=['en', 'sw', 'ja']), progress=False)
    write_samples(d/'en.jsonl', [s for s in read_samples(d/'train.jsonl') if s.language == 'en'])
    return d


@pytest.fixture(scope='module')
def caption_world(tmp_path_factory):
    "A world of captioned scenes and an alt-text pool over it with known faults (correct, dropped word, spam, mismatched)."
    from pangea_nb.data.synth import write_world, WorldConfig
    from pangea_nb.backends.oracle import synthetic_alt_text_pool
    d = tmp_path_factory.mktemp('caption_world')
    write_world(d, WorldConfig(n_train=300, n_test=0, langs=['en', 'sw', 'ja'], families={'caption': 1}), progress=False)
    synthetic_alt_text_pool(d, d/'alt.jsonl')
    return d


def read_ledger(path):
    return [json.loads(l) for l in Path(path).read_text(encoding='utf-8').splitlines() if l.strip()]


# ---- QC on garbage and honesty on the real sample -------------------------------------------------------------

def test_random_mt_garbage_is_rejected_by_qc_on_real_sample(shared, models, tmp_path):
    from pangea_nb.curation.translate import translate_file, TranslateConfig
    cfg = TranslateConfig(targets=['sw', 'ja'], backend=f"hf-mt:{models['nllb']}", lang_source='pangeains', limit=14, batch_size=8)
    rep = translate_file(shared/'data/pangeains-sample/sample_data.json', tmp_path/'out', cfg, progress=False)
    reached = rep['in'] - rep['by_step']['read'] - rep['by_step']['source']
    assert reached >= 20, rep['by_step']
    assert rep['kept'] <= 0.05 * reached, rep['by_reason']                 # (nearly) everything rejected ...
    assert rep['by_step']['qc'] >= 0.9 * reached                             # ... by the QC, not by backend failures
    assert set(rep['by_reason']) <= QC_REASONS | SOURCE_REASONS, rep['by_reason']
    assert rep['by_reason'].get('no_source_language', 0) > 0                 # the real sample's records without a language
    rejects = read_ledger(tmp_path/'out'/'rejects.jsonl')
    assert len(rejects) == rep['rejected'] and all(r['reasons'] for r in rejects)
    assert (tmp_path/'out'/'funnel.png').exists() and json.loads((tmp_path/'out'/'report.json').read_text())['in'] == rep['in']


def test_curate_real_sample_with_random_llava_rejects_everything(shared, models, tmp_path):
    from pangea_nb.curation.curate import curate_file, CurateConfig
    cfg = CurateConfig(backend=f"hf-llava:{models['llava']}", lang_source='pangeains', limit=40, batch_size=8, max_new_tokens=24)
    rep = curate_file(shared/'data/pangeains-sample/sample_data.json', tmp_path/'cur', cfg, progress=False)
    assert rep['in'] == 40 and rep['kept'] == 0
    assert rep['by_step']['score'] > 0 and rep['by_reason'].get('score_unparseable', 0) == rep['by_step']['score']
    assert sum(rep['by_step'].values()) == rep['in']                          # every record accounted for, once


def test_oracle_refuses_the_real_sample(shared, world, tmp_path):
    from pangea_nb.curation.translate import translate_file, TranslateConfig
    from pangea_nb.curation.curate import curate_file, CurateConfig
    oracle = {'kind': 'synthetic-oracle', 'model': str(world)}
    rep = translate_file(shared/'data/pangeains-sample/sample_data.json', tmp_path/'tr',
                         TranslateConfig(targets=['sw'], backend=oracle, lang_source='pangeains', limit=40), progress=False)
    assert rep['kept'] == 0 and rep['by_reason'].get('translator_refused', 0) > 0
    assert set(rep['by_reason']) <= {'translator_refused'} | SOURCE_REASONS
    rep = curate_file(shared/'data/pangeains-sample/sample_data.json', tmp_path/'cur',
                      CurateConfig(backend=oracle, lang_source='pangeains', limit=40), progress=False)
    assert rep['kept'] == 0 and rep['by_reason'].get('backend_error', 0) == rep['by_step']['score'] > 0
    errs = [r for r in read_ledger(tmp_path/'cur'/'ledger_score.jsonl') if r.get('step') == 'score']
    assert all('refuses real data' in str(r['detail']) for r in errs)


# ---- the synthetic world with the oracle ------------------------------------------------------------------------

def test_synthetic_world_translation_qc_catch_rates(world, tmp_path):
    from pangea_nb.curation.translate import translate_file, TranslateConfig
    from pangea_nb.backends.oracle import qc_catch_rates
    from pangea_nb.curation.runner import Ledger
    cfg = TranslateConfig(targets=['ja', 'sw', 'ar'], backend={'kind': 'synthetic-oracle', 'model': str(world), 'options': {'error_rate': 0.3, 'seed': 3}})
    rep = translate_file(world/'en.jsonl', tmp_path/'tr', cfg, progress=False)
    rates = qc_catch_rates(Ledger(tmp_path/'tr'/'ledger.jsonl'))
    print('synthetic translation QC:', rep['in'], rep['kept'], rep['by_reason'], rates)
    # exact translations pass, except short Swahili lines lingua takes for Shona or Zulu (measured: 2 of 120)
    assert rates['clean_samples'] > 100 and rates['clean_dropped_pct'] <= 3.0
    assert rates['caught_pct']['untranslated'] >= 50                                  # leftover words in ja / ar
    assert rep['kept'] > 0 and (tmp_path/'tr'/'ja.jsonl').exists()


def test_synthetic_world_curation(caption_world, tmp_path):
    from pangea_nb.curation.curate import curate_file, CurateConfig
    from pangea_nb.data.synth import synth_answer_correct
    world = caption_world
    cfg = CurateConfig(backend={'kind': 'synthetic-oracle', 'model': str(world)}, require_country=False, target_n=30,
                       near_dup_distance=-1)     # level-1 scenes are too plain for dHash (see 76_oracle)
    rep = curate_file(world/'alt.jsonl', tmp_path/'cur', cfg, progress=False)
    print('synthetic curation:', rep['funnel'], rep['by_reason'])
    truth = {r['id']: r['truth'] for r in map(json.loads, (world/'alt.jsonl').read_text().splitlines())}
    L = {o['key']: o for o in read_ledger(tmp_path/'cur'/'ledger_score.jsonl')}
    low = [k for k, o in L.items() if o.get('step') == 'quality']
    assert low and all(truth[k] in ('spam', 'dropped_word') for k in low)            # spam never passes the score
    assert all(truth[k] != 'spam' for k, o in L.items() if o['status'] == 'kept')
    assert rep['selected'] == 30 and rep['kept'] >= 27 and rep['by_reason'].get('exact_duplicate', 0) > 0
    recs = read_ledger(tmp_path/'cur'/'curated.jsonl')
    assert len(recs) == 2 * rep['kept'] and all(len(r['conversations']) in (2, 4) for r in recs)
    rep2 = curate_file(world/'alt.jsonl', tmp_path/'cur2', cfg.replace(require_country=True), progress=False)
    assert rep2['kept'] == 0 and rep2['by_reason']['no_specific_country'] == rep2['by_step']['country'] > 0


# ---- a real `pangea serve` process ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def served(tiny_checkpoint):
    "`pangea serve` of the project's tiny trained LLaVA (conftest's session checkpoint), as a separate process."
    with pangea_serve(tiny_checkpoint) as url: yield url


def test_stages_over_http_against_pangea_serve(served, tiny_checkpoint, world, shared, tmp_path):
    from pangea_nb.backends.core import load_backend, Prompt
    from pangea_nb.curation.translate import translate_file, TranslateConfig
    from pangea_nb.curation.curate import curate_file, CurateConfig
    from PIL import Image
    be = load_backend(served)
    assert be.identity()['model'] == Path(tiny_checkpoint).name and be.identity()['revision']
    r = be.generate([Prompt('What colour is this?', [Image.new('RGB', (64, 64), 'red')]), Prompt('Hello')], max_new_tokens=8)
    assert all(x.ok for x in r)
    rep = translate_file(world/'en.jsonl', tmp_path/'tr', TranslateConfig(targets=['sw'], backend=served, limit=12, max_new_tokens=32), progress=False)
    assert rep['unit'] == 'turn' and rep['translator']['endpoints'] == [served]
    # a 0.3M-parameter model trained on the synthetic world's Q&A cannot translate: its replies fail QC (none is a backend error)
    assert rep['in'] == 12 and rep['by_step']['backend'] == 0 and rep['kept'] <= 1 and set(rep['by_reason']) <= QC_REASONS
    rep = curate_file(shared/'data/pangeains-sample/sample_data.json', tmp_path/'cur',
                      CurateConfig(backend=served, lang_source='pangeains', limit=20, max_new_tokens=24), progress=False)
    assert rep['kept'] == 0 and rep['by_reason'].get('score_unparseable', 0) == rep['by_step']['score'] > 0
    assert json.loads((tmp_path/'cur'/'report.json').read_text())['backends']['scorer']['endpoints'] == [served]


# ---- a server that misbehaves ------------------------------------------------------------------------------------

class _Bad(http.server.BaseHTTPRequestHandler):
    "503 once, a hang past the client's timeout once, a non-JSON 200 once, garbage content, or 500 forever, by alt-text."
    attempts, release = Counter(), threading.Event()
    GOOD = {'score': '{"quality": 5, "subject": "food", "country": "Kenya"}',
            'recaption': 'Sahani ya ugali na samaki wa kukaanga kwenye meza ya soko, pamoja na mboga za majani na chai.',
            'qa': '[{"task_type": "food and cuisine", "question": "Ni chakula gani kilicho kwenye sahani?", "answer": "Ni ugali na samaki."}]'}
    def log_message(self, *a): pass
    def _send(self, code, body, ctype='application/json'):
        b = body.encode(); self.send_response(code); self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_GET(self): self._send(200, json.dumps({'data': [{'id': 'bad-model'}]}))
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        c = body['messages'][-1]['content']
        text = c if isinstance(c, str) else ' '.join(p.get('text', '') for p in c)
        key = next((k for k in ('flaky', 'slow', 'html', 'garbage', 'dead') if k in text), 'ok')
        kind = 'score' if 'alt-text' in text and 'JSON object' in text else 'qa' if 'question–answer' in text else 'recaption'
        n = _Bad.attempts[(key, kind)] = _Bad.attempts[(key, kind)] + 1
        if kind == 'score' and n == 1 and key == 'flaky': return self._send(503, '{"error": "overloaded"}')
        if kind == 'score' and n == 1 and key == 'slow': _Bad.release.wait(5)
        if kind == 'score' and n == 1 and key == 'html': return self._send(200, '<html>502 Bad Gateway</html>', 'text/html')
        if key == 'dead': return self._send(500, '{"error": "internal"}')
        content = 'Quality: excellent!!! 10/10 Japan Japan' if kind == 'score' and key == 'garbage' else _Bad.GOOD[kind]
        self._send(200, json.dumps({'model': 'bad-model', 'choices': [{'message': {'content': content}, 'finish_reason': 'stop'}]}))


class _Quiet(socketserver.ThreadingTCPServer):
    def handle_error(self, request, client_address): pass      # the client hung up on the 'slow' reply: expected


def test_misbehaving_server_timeouts_5xx_and_unparseable_output(tmp_path):
    from pangea_nb.curation.curate import curate_file, CurateConfig
    from PIL import Image
    import numpy as np
    srv = _Quiet(('127.0.0.1', 0), _Bad); srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{srv.server_address[1]}/v1'
    (tmp_path/'img').mkdir()
    recs = []
    for i, k in enumerate(['flaky', 'slow', 'html', 'garbage', 'dead']):
        Image.fromarray((np.random.default_rng(i).random((8, 8, 3)) * 255).astype('uint8')).resize((96, 96)).save(tmp_path/'img'/f'{k}.png')
        recs.append({'id': k, 'image': f'img/{k}.png', 'TEXT': f'Chakula cha sokoni {k} Kisumu', 'LANGUAGE': 'sw'})
    (tmp_path/'pairs.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    backend = {'kind': 'http', 'endpoints': [url], 'timeout': 1.0, 'max_retries': 2, 'backoff': 0.05, 'max_backoff': 0.2}
    try:
        rep = curate_file(tmp_path/'pairs.jsonl', tmp_path/'out', CurateConfig(backend=backend), progress=False)
    finally:
        _Bad.release.set(); srv.shutdown(); srv.server_close()
    L = {o['key']: o for o in read_ledger(tmp_path/'out'/'ledger_score.jsonl')}
    assert {k for k, o in L.items() if o['status'] == 'kept'} == {'flaky', 'slow', 'html'}        # retried, then fine
    assert L['garbage']['reasons'] == ['score_unparseable'] and 'excellent' in L['garbage']['detail']['reply']
    assert L['dead']['reasons'] == ['backend_error'] and 'HTTP 500' in L['dead']['detail'] and 'gave up after 3 attempts' in L['dead']['detail']
    assert _Bad.attempts[('flaky', 'score')] == 2 and _Bad.attempts[('slow', 'score')] == 2 and _Bad.attempts[('dead', 'score')] == 3
    assert rep['kept'] == 3 and len(read_ledger(tmp_path/'out'/'curated.jsonl')) == 6


# ---- SIGKILL and resume ------------------------------------------------------------------------------------------

def _kill_midway(cmd, ledger, min_lines, timeout=180):
    "Start `cmd`, SIGKILL it once `ledger` has `min_lines` lines; returns the lines it had."
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env1())
    t0 = time.time()
    while time.time() - t0 < timeout:
        n = len(Path(ledger).read_text(encoding='utf-8').splitlines()) if Path(ledger).exists() else 0
        if n >= min_lines: break
        if p.poll() is not None: pytest.fail(f'finished before it could be killed (exit {p.returncode}): {p.stderr.read()[-2000:]}')
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    return n


def test_sigkill_then_resume_translate_no_duplicates_no_loss(models, world, tmp_path):
    out = tmp_path/'tr'
    cmd = [str(BIN/'pangea'), 'data', 'translate', str(world/'en.jsonl'), '--to', 'sw,ja', '--backend', f"hf-mt:{models['nllb']}",
           '--out', str(out), '--batch-size', '2', '--no-fix', '--limit', '40']
    _kill_midway(cmd, out/'ledger.jsonl', 10)
    from pangea_nb.curation.runner import Ledger
    before = len(Ledger(out/'ledger.jsonl'))                               # opening repairs a torn last line, as the rerun does
    r = subprocess.run(cmd + ['--json'], capture_output=True, text=True, env=env1(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout[r.stdout.index('{'):])
    keys = [o['key'] for o in read_ledger(out/'ledger.jsonl')]
    n_en = min(40, sum(1 for _ in open(world/'en.jsonl')))
    assert len(keys) == len(set(keys)) == 2 * n_en == rep['in']          # no duplicate, none lost
    assert rep['run']['skipped'] == before >= 10                          # finished units were not redone
    out_ids = [json.loads(l)['id'] for f in ('sw.jsonl', 'ja.jsonl') if (out/f).exists() for l in (out/f).read_text().splitlines()]
    rej = read_ledger(out/'rejects.jsonl')
    assert len(out_ids) + len(rej) == 2 * n_en and len(set(out_ids)) == len(out_ids)


def test_sigkill_then_resume_curate_no_duplicates_no_loss(models, caption_world, tmp_path):
    world = caption_world
    out = tmp_path/'cur'
    cmd = [str(BIN/'pangea'), 'data', 'curate', str(world/'alt.jsonl'), '--out', str(out), '--backend', f"hf-llava:{models['llava']}",
           '--batch-size', '1']
    _kill_midway(cmd, out/'ledger_score.jsonl', 6)
    r = subprocess.run(cmd + ['--json'], capture_output=True, text=True, env=env1(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout[r.stdout.index('{'):])
    keys = [o['key'] for o in read_ledger(out/'ledger_score.jsonl')]
    n = sum(1 for _ in open(world/'alt.jsonl'))
    assert len(keys) == len(set(keys)) == n == rep['in'] and rep['run']['score'].get('skipped', 0) >= 5
    assert rep['kept'] == 0 and len(read_ledger(out/'rejects.jsonl')) == n
