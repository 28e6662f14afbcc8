"""CulturalGround end to end: `pangea cultural build` on the shipped fixtures offline (validated, rerun reused), the SPARQL
path and the Commons download path against local servers (a killed download resumes), refinement and the relevance
filter through the HTTP backend on a scripted chat server, and the user-supplied indicator figure."""
import base64, io, json, os, re, signal, subprocess, sys, time, urllib.parse
from collections import Counter
from pathlib import Path
import pytest
import yaml
from conftest import ROOT, BIN

FX = ROOT/'pangea_nb'/'assets'/'cultural'/'fixtures'/'entities'

def pangea(*args, check=True, timeout=300):
    r = subprocess.run([str(BIN/'pangea'), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode: raise AssertionError(f'pangea {args} exited {r.returncode}: {r.stderr[-3000:]}')
    return r

def build_json(*args, **kw):
    r = pangea('cultural', 'build', *args, '--json', **kw)
    return json.loads(r.stdout)

def samples(out):
    return [json.loads(l) for l in (Path(out)/'culturalground.jsonl').read_text(encoding='utf-8').splitlines()]

# --- offline, on the fixtures ------------------------------------------------------------------------------------------

def test_offline_build_validates_and_rerun_reuses_every_stage(tmp_path):
    out = tmp_path/'cg'
    ind = tmp_path/'indicator.csv'   # made-up test values, only to exercise the plot; not real data
    ind.write_text('iso2,test_value\n' + '\n'.join(f'{c},{v}' for c, v in
                   [('JP', 5), ('IN', 1), ('ES', 4), ('ID', 2), ('KE', 1.5), ('RU', 3), ('TR', 2.5), ('CN', 3.5)]) + '\n')
    rep = build_json('--entities', FX, '--out', out, '--images', 'local', '--langs', 'en,ja,sw,ar,zh', '--indicator', ind)
    S = rep['summary']
    assert S['cultural_entities'] == 25 and S['entities_with_images'] == 24 and S['final'] == S['qa_generated'] > 200
    e = rep['stages']['entities']
    assert (e['redirects'], e['duplicates'], e['missing'], e['not_item']) == (2, 2, 1, 1)
    rejects = [json.loads(l) for l in (out/'stages'/'entities'/'rejects.jsonl').read_text().splitlines()]
    assert sorted(r['reason'] for r in rejects) == ['missing entity (deleted or never existed)', "not an item (type 'property')"]
    assert rep['validation']['rejected'] == 0 and set(rep['validation']['by_language']) == {'en', 'ja', 'sw', 'ar', 'zh'}
    # the issue-3 validator as the user runs it
    v = json.loads(pangea('data', 'validate', out/'culturalground.jsonl', '--json').stdout)
    assert v['total'] == S['final'] and v['rejected'] == 0
    # every sample: its template and triple, a licensed image, an answer that is not in the question
    from pangea_nb.cultural.qa import leaked
    for s in samples(out):
        p = s['provenance']
        assert p['template']['id'].startswith(s['language'] + ':') and p['triple']['entity'].startswith('Q')
        assert p['image']['licence'] and (out/s['image']).exists()
        q = s['conversations'][0]['value']
        if s['task'] == 'cultural_mcq':
            assert s['conversations'][1]['value'] == 'ABCD'[s['meta']['answer_index']] and f"\n{s['conversations'][1]['value']}. " in q
            assert leaked(s['meta']['question'], [s['meta']['answer_text']]) is None
        else: assert leaked(q, [s['conversations'][1]['value']]) is None
    # the indicator figure exists only because a CSV was given
    assert rep['indicator']['column'] == 'test_value' and -1 <= rep['indicator']['spearman_entities'] <= 1
    assert {f'coverage_vs_indicator.{x}' for x in ('png', 'pdf', 'csv')} <= {p.name for p in (out/'figures').iterdir()}
    # a rerun changes nothing on disk and gives the same report
    watched = [out/'culturalground.jsonl', *sorted((out/'stages').glob('*/done.json'))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    rep2 = build_json('--entities', FX, '--out', out, '--images', 'local', '--langs', 'en,ja,sw,ar,zh', '--indicator', ind)
    assert rep2['summary'] == S and {p: p.stat().st_mtime_ns for p in watched} == before

def test_bad_inputs_fail_or_are_counted(tmp_path):
    lines = (FX/'entities.jsonl').read_text(encoding='utf-8').splitlines()
    (tmp_path/'in').mkdir()
    (tmp_path/'in'/'e.jsonl').write_text('\n'.join([lines[0], '{"id": "Q1", "labels": ', lines[1]]) + '\n', encoding='utf-8')
    (tmp_path/'in'/'bad.json').write_text('{"entities": {"Q5": {"id": "Q5", "labels": ["en"]}}}', encoding='utf-8')
    rep = build_json('--entities', tmp_path/'in', '--out', tmp_path/'o', '--images', 'local', '--langs', 'en')
    assert rep['stages']['entities']['malformed'] == 2 and rep['stages']['entities']['entities'] == 2
    rej = (tmp_path/'o'/'stages'/'entities'/'rejects.jsonl').read_text()
    assert 'line 2' in rej and '"field": "labels"' in rej
    r = pangea('cultural', 'build', '--entities', tmp_path/'nope', '--out', tmp_path/'o2', check=False)
    assert r.returncode == 1 and 'no such file' in r.stderr and 'Traceback' not in r.stderr
    r = pangea('cultural', 'build', '--entities', FX, '--out', tmp_path/'o3', '--images', 'web', check=False)
    assert r.returncode == 1 and "CulturalConfig.images: must be one of" in r.stderr
    bad = tmp_path/'ind.csv'; bad.write_text('country,x\nAtlantis,1\n')
    r = pangea('cultural', 'build', '--entities', FX, '--out', tmp_path/'o', '--images', 'local', '--langs', 'en', '--indicator', bad, check=False)
    assert r.returncode == 1 and 'name no known region' in r.stderr

# --- the SPARQL endpoint ------------------------------------------------------------------------------------------------

def test_build_from_sparql_endpoint(tmp_path):
    from pangea_nb.cultural.http import LocalServer
    from pangea_nb.cultural.sparql import recorded_sparql_handler
    with LocalServer(recorded_sparql_handler(FX.parent/'sparql', fail_first={'page': 1})) as srv:
        cfg = tmp_path/'cg.yaml'
        cfg.write_text(yaml.safe_dump({'entities': f"sparql:{srv.url('/sparql')}", 'out': str(tmp_path/'cg'), 'regions': ['Q17'],
                                       'langs': ['en', 'ja', 'zh'], 'sparql_page_size': 2, 'sparql_min_interval': 0.0, 'images': 'local'}))
        rep = build_json('--config', cfg)
        calls = len(srv.calls)
        rep2 = build_json('--config', cfg)
        assert len(srv.calls) == calls                                    # the rerun asks the endpoint nothing
    e = rep['stages']['entities']
    assert e['pages'] == 2 and e['items'] == 3 and e['queries'] == 11    # per page: statements, class chain, two label queries
    assert rep['summary']['cultural_entities'] == 3 and rep['validation']['rejected'] == 0
    assert set(rep['validation']['by_language']) == {'en', 'ja', 'zh'} and rep2['summary'] == rep['summary']
    ua = {c.headers['user-agent'] for c in srv.calls}
    assert len(ua) == 1 and ua.pop().startswith('pangea_nb-culturalground/')

# --- Commons downloads, killed and resumed -------------------------------------------------------------------------------

def commons_server(delay=0.15):
    "Commons imitation: licences for every file but one; images made with PIL; a 404 and an HTML page among them."
    from PIL import Image
    calls = Counter()
    def handler(req):
        if req.path.endswith('/api.php'):
            pages = []
            for t in req.query['titles'].split('|'):
                meta = {'LicenseShortName': {'value': 'CC BY-SA 4.0'}, 'Artist': {'value': '<b>Example Photographer</b>'},
                        'AttributionRequired': {'value': 'true'}}
                pages.append({'ns': 6, 'title': t, 'missing': True} if 'Ngoma' in t else
                             {'ns': 6, 'title': t, 'imageinfo': [{'descriptionurl': f'https://commons.wikimedia.org/wiki/{t}', 'extmetadata': meta}]})
            return 200, {'Content-Type': 'application/json'}, json.dumps({'batchcomplete': True, 'query': {'pages': pages}}).encode()
        name = urllib.parse.unquote(req.path.rsplit('/', 1)[-1]).split('px-', 1)[-1]
        calls[name] += 1
        time.sleep(delay)
        if name == 'Koto_player.jpg': return 404, {}, b'Not Found'
        if name == 'Guzheng.jpg': return 200, {'Content-Type': 'text/html'}, b'<html>Error page</html>'
        b = io.BytesIO(); Image.new('RGB', (48, 32), (len(name) * 7 % 255, 90, 160)).save(b, 'JPEG')
        return 200, {'Content-Type': 'image/jpeg'}, b.getvalue()
    return handler, calls

def test_commons_download_killed_and_resumed(tmp_path):
    from pangea_nb.cultural.http import LocalServer
    handler, calls = commons_server()
    out, cache = tmp_path/'cg', tmp_path/'cache'
    with LocalServer(handler) as srv:
        cfg = tmp_path/'cg.yaml'
        cfg.write_text(yaml.safe_dump({'entities': str(FX), 'out': str(out), 'image_cache': str(cache), 'langs': ['en'], 'images': 'commons',
                                       'commons_upload': srv.url('/upload'), 'commons_api': srv.url('/w/api.php'), 'image_min_interval': 0.0}))
        p = subprocess.Popen([str(BIN/'pangea'), 'cultural', 'build', '--config', str(cfg), '--json'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        index, t0 = cache/'index.jsonl', time.time()
        while (not index.exists() or len(index.read_text().splitlines()) < 8) and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert not (out/'stages'/'images'/'done.json').exists()           # killed inside the image stage
        before = {json.loads(l)['file'] for l in index.read_text().splitlines() if l.strip().endswith('}')}
        assert len(before) >= 8
        rep = build_json('--config', cfg)
    settled_before = {n for n in before if n in calls}
    assert settled_before and all(calls[n] == 1 for n in settled_before)  # nothing finished before the kill was fetched again
    im = rep['stages']['images']
    assert im['failed_by_reason'] == {'no licence': 1, 'HTTP 404': 1, 'content type': 1}
    assert rep['summary']['entities_with_images'] == 21 and rep['validation']['rejected'] == 0
    for s in samples(out):
        assert s['provenance']['image']['licence'] == 'CC BY-SA 4.0' and s['provenance']['image']['artist'] == 'Example Photographer'
        assert s['provenance']['image']['origin'] == 'commons'

# --- refinement and the relevance filter through a backend ----------------------------------------------------------------

def scripted_models(down:set):
    "OpenAI-compatible replies fixed by this test (not a model): echo rewrites, one leaking rewrite; yes/no verdicts by entity."
    from pangea_nb.cultural.refine import chat_test_handler
    asked = Counter()
    def reply_for(user):
        asked[user[:60]] += 1
        if any(k in user for k in down): return 503                   # a server having trouble with these, for now
        if 'Rewrite the question' in user:
            q = re.search(r'question about the image: (.*)\n', user, re.I).group(1)
            if 'Multiple-choice' in user: return json.dumps({'question': q}, ensure_ascii=False)
            a = re.search(r'Correct answer: (.*)\n', user).group(1)
            if q == 'Which country does Sushi come from?':                 # "Japanese" is not the answer "Japan": accepted
                return json.dumps({'question': 'Which country does this Japanese dish come from?', 'answer': f'It comes from {a}.'})
            if 'Taj Mahal' in q: return json.dumps({'question': q + ' (India?)', 'answer': a})                       # leaks India
            return json.dumps({'question': q, 'answer': a}, ensure_ascii=False)
        if 'Is this image relevant' in user:
            if '"Kimchi"' in user: return 'No.'
            if '"Paella"' in user: return 'Perhaps, the picture is unclear.'
            return 'Yes'
        return 500
    return chat_test_handler(reply_for), asked

def test_refine_and_filter_through_http_backend(tmp_path):
    from pangea_nb.cultural.http import LocalServer
    down = {'show "Tango"'}                                            # the filter's questions about the Tango fail at first
    handler, asked = scripted_models(down)
    out = tmp_path/'cg'
    with LocalServer(handler) as srv:
        spec = tmp_path/'backend.yaml'
        spec.write_text(yaml.safe_dump({'kind': 'http', 'endpoints': [srv.url('/v1')], 'max_retries': 0}))
        args = ('--entities', FX, '--out', out, '--images', 'local', '--langs', 'en,ja', '--backend', spec)
        r = pangea('cultural', 'build', *args, check=False)
        assert r.returncode == 1 and 'incomplete' in r.stderr and 'model calls failed' in r.stderr and 'Traceback' not in r.stderr
        done_before = sum(1 for _ in open(next((out/'stages'/'filter').glob('*/ledger.jsonl'))))
        down.clear(); n1 = sum(asked.values())
        rep = build_json(*args)                                         # the rerun asks only for what is missing
        assert sum(asked.values()) - n1 == rep['stages']['filter']['in'] - done_before
        n = sum(asked.values())
        rep2 = build_json(*args)
        assert sum(asked.values()) == n and rep2['summary'] == rep['summary']   # ledgers and done markers: no call twice
    S, R, F = rep['summary'], rep['stages']['refine'], rep['stages']['filter']
    assert R['in'] == S['qa_generated'] and R['by_reason'] == {'leaked': 1}        # "(India?)" added to the Taj Mahal's question
    assert S['leaked'] == R['rejected'] and S['refined'] == R['kept']
    assert F['by_reason']['not_relevant'] > 0 and F['by_reason']['unparseable'] > 0
    assert S['final'] == F['kept'] == S['qa_generated'] - F['rejected']    # refine failures keep their template wording
    rej = [json.loads(l) for l in (out/'rejects.jsonl').read_text().splitlines()]
    assert {r['stage'] for r in rej} == {'refine', 'filter'}
    assert [(r['key'], r['reasons'], r['kept_as_template']) for r in rej if r['stage'] == 'refine'] == [('cg-Q990000013-P17-open-en', ['leaked'], True)]
    assert all(r['record']['id'] == r['key'] for r in rej if r['stage'] == 'filter')
    final = samples(out)
    assert rep['validation']['rejected'] == 0 and len(final) == S['final']
    assert all(s['provenance']['filtered_by']['model'] == 'scripted-test-server' for s in final)
    sushi = next(s for s in final if s['id'] == 'cg-Q990000003-P495-open-en')
    assert sushi['conversations'][0]['value'] == '<image>\nWhich country does this Japanese dish come from?' and sushi['meta']['refined']

# --- interleaving with general data ----------------------------------------------------------------------------------------

def test_mix_with_the_real_pangeains_sample(tmp_path, shared):
    "CulturalGround (offline build) interleaved with the real 270-record PangeaIns sample in the paper's proportions."
    sample = shared/'data'/'pangeains-sample'/'sample_data.json'
    pangea('cultural', 'build', '--entities', FX, '--out', tmp_path/'cg', '--images', 'local', '--langs', 'en,ja,zh,hi,ar')
    r = pangea('cultural', 'mix', tmp_path/'cg', tmp_path/'mix', '--general', sample, '--lang-source', 'pangeains', '--materialize')
    st = json.loads((tmp_path/'mix'/'stats.json').read_text())
    assert set(st['by_source']) == {'culturalground-open', 'culturalground-mcq', 'general'}
    from pangea_nb.cultural.mix import culturalpangea_shares
    want = culturalpangea_shares(st['by_source'])
    got = {k: v / st['selected'] for k, v in st['by_source'].items()}
    capped = sum(e['need'] - e['have'] for e in st['events'] if e.get('action') == 'cap')
    assert st['selected'] == st['requested'] - capped                     # shortfalls are reported, never silently filled
    assert all(abs(got[k] - want[k]) < 0.1 for k in want), (got, want)
    v = json.loads(pangea('data', 'validate', tmp_path/'mix'/'data'/'part-00000.jsonl', '--root', tmp_path/'mix', '--json').stdout)
    assert v['rejected'] == 0 and v['total'] == st['selected']
    assert 'culturalground-open' in r.stdout

# --- the CulturalPangea recipe through `pangea train` ---------------------------------------------------------------------

def test_recipe_trains_through_pangea_train(tmp_path):
    "build -> mix --materialize -> recipe -> pangea train, at tiny scale: vision frozen, projector and LM trained, no sample lost."
    import torch
    from pangea_nb.config import ModelConfig
    from pangea_nb.data.schema import read_samples
    from pangea_nb.model.build import build_model, build_processor, component_of, load_pretrained, save_model
    from pangea_nb.model.tokenizer import train_tokenizer
    pangea('cultural', 'build', '--entities', FX, '--out', tmp_path/'cg', '--images', 'local', '--langs', 'en,sw')
    texts = [t.text for s in read_samples(tmp_path/'cg'/'culturalground.jsonl') for t in s.turns]
    mcfg = ModelConfig.preset('tiny'); tok = train_tokenizer(texts * 3, vocab_size=400)
    save_model(build_model(mcfg, tok, seed=0), build_processor(mcfg, tok), tmp_path/'ckpt', mcfg)   # stands in for Pangea-7B
    pangea('cultural', 'mix', tmp_path/'cg', tmp_path/'mix', '--materialize')
    r = pangea('cultural', 'recipe', tmp_path/'ckpt', tmp_path/'mix', tmp_path/'run.yaml', '--scale', 'tiny', '--run-dir', tmp_path/'run', '--max-steps', '3')
    assert 'lr 5e-06' in r.stdout and 'vision frozen' in r.stdout
    pangea('train', tmp_path/'run.yaml', '--no-progress')
    log = [json.loads(l) for l in (tmp_path/'run'/'train_log.jsonl').read_text().splitlines()]
    assert len(log) == 3 and sum(x['skipped'] for x in log) == 0 and max(log[-1]['lr'].values()) <= 5e-6
    (m0, _), (m1, _) = load_pretrained(tmp_path/'ckpt'), load_pretrained(tmp_path/'run'/'model')
    w1 = dict(m1.named_parameters())
    assert {component_of(n) for n, p in m0.named_parameters() if not torch.equal(p, w1[n])} == {'projector', 'lm'}
    # the relevance filter with the project's own (tiny, just fine-tuned) model through the backend layer: its replies
    # are not yes/no, so every item is rejected as unparseable and kept in the rejects file with that reason
    rep = build_json('--entities', FX, '--out', tmp_path/'cg2', '--images', 'local', '--langs', 'en',
                     '--filter-backend', f"hf-llava:{tmp_path/'run'/'model'}")
    F = rep['stages']['filter']
    assert F['in'] == rep['summary']['qa_generated'] > 0 and F['kept'] == 0 and F['by_reason'] == {'unparseable': F['in']}
    assert rep['summary']['final'] == 0 and rep['validation']['rejected'] == 0
    rej = [json.loads(l) for l in (tmp_path/'cg2'/'rejects.jsonl').read_text().splitlines()]
    assert len(rej) == F['in'] and all(r['stage'] == 'filter' and r['reasons'] == ['unparseable'] for r in rej)

# --- the CulturalPangea ablations through the run template ----------------------------------------------------------------

def test_culturalpangea_ablation_spec_offline_tiny(tmp_path):
    "Two grid points of sweeps/culturalpangea_ablations.yaml (interleave vs append, Swahili held out) at smoke size, then the report."
    from pangea_nb.config import SweepConfig
    from pangea_nb.sweep.runner import expand_grid
    full = SweepConfig.load(ROOT/'sweeps'/'culturalpangea_ablations.yaml')
    assert len(expand_grid(full)) == 16 and {'cultural.refine', 'cultural.filter', 'cultural.mix', 'cultural.held_out_lang'} <= set(full.grid)
    base = {**full.base, 'data': {'n_samples': 48, 'langs': ['sw']}, 'train': {'micro_batch_size': 8},
            'eval': {'synthetic_n': 3, 'modes': ['generate', 'loglik']},
            'cultural': {'enabled': True, 'langs': ['en', 'sw'], 'held_out_lang': 'sw'},
            'stages': [{'train.stage': 0, 'train.lr': 0.003, 'train.max_steps': 4, 'data.n_samples': 200},
                       {'train.stage': 1, 'train.lr': 0.001, 'train.max_steps': 4, 'data.n_samples': 200, 'data.english_ratio': 1.0},
                       {'train.stage': 2, 'train.max_steps': 8}]}
    spec = tmp_path/'cg.yaml'
    spec.write_text(yaml.safe_dump({**full.to_dict(), 'base': base, 'grid': {'cultural.mix': ['interleave', 'append']},
                                    'out_dir': str(tmp_path/'runs'), 'jobs': 1, 'template': str(ROOT/'nbs'/'sweeps'/'run.ipynb')}))
    r = subprocess.run([str(BIN/'pangea'), 'sweep', str(spec), '--quiet'], capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'PANGEA_HOME': str(tmp_path/'home')})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = {json.loads((m.parent/'params.json').read_text())['point']['cultural.mix']: m.parent for m in (tmp_path/'runs').glob('*/metrics.json')}
    assert set(runs) == {'interleave', 'append'}
    for mix, d in runs.items():
        rows = json.loads((d/'metrics.json').read_text())['rows']
        got = {(x['task'], x['lang'], x['metric']) for x in rows}
        assert {('cvqa', l, m) for l in ('en', 'sw') for m in ('accuracy', 'loglik_accuracy')} <= got and ('synthetic', 'sw', 'exact_match') in got
        info = json.loads((d/'cultural.json').read_text())
        assert info['split']['held_out:sw'] > 0 and info['split']['test:sw'] > 0 and 'train:sw' not in info['split']
        train = [json.loads(l) for l in (d/'culturalground'/'train.jsonl').read_text().splitlines()]
        assert len(train) == info['train_samples'] > 0 and {s['language'] for s in train} == {'en'}
        log = [json.loads(l) for l in (d/'stage2'/'train_log.jsonl').read_text().splitlines() if l.strip()]
        if mix == 'append':                       # the general phase first, then CulturalGround for the remaining steps
            s = info['append_steps']
            assert s['general'] + s['culturalground'] == 8 and s['general'] >= 1 and (d/'general'/'stage2').is_dir()
            assert log[-1]['step'] == s['culturalground']
        else: assert 'append_steps' not in info and log[-1]['step'] == 8
    # every arm is scored on the same culture test
    assert len({(runs[m]/'culturalground'/'culture_test'/'data'/'test-00000-of-00001.parquet').read_bytes() for m in runs}) == 1
    r = subprocess.run([str(BIN/'pangea'), 'cultural', 'ablation-report', str(spec), '--out', str(tmp_path/'figs'), '--baseline', 'cultural.mix=interleave'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    arms = pd.read_csv(tmp_path/'figs'/'culturalpangea_arms_generate.csv')
    assert list(arms['arm']) == ['cultural.mix=interleave', 'cultural.mix=append'] and {'culture', 'mainstream'} <= set(arms.columns)
    gains = pd.read_csv(tmp_path/'figs'/'culturalpangea_gains_generate.csv')
    assert set(gains['lang']) == {'en', 'sw'} and 'gain: cultural.mix=append' in gains.columns and gains['resource_level'].notna().all()
    assert (tmp_path/'figs'/'culturalpangea_gains_generate.png').exists()

def test_culturalpangea_eval_bundle_shows_and_names_each_metric():
    "`pangea config show culturalpangea --kind eval`: the culture and mainstream tasks, each with a data path and a metric."
    d = yaml.safe_load(pangea('config', 'show', 'culturalpangea', '--kind', 'eval').stdout)
    assert d['groups'] == {'culture': ['cvqa', 'marvl', 'alm-bench', 'merlin', 'maxm', 'm3exam', 'xm100'],
                           'mainstream': ['mmbench', 'scienceqa', 'mme', 'pope', 'ai2d']}
    from pangea_nb.eval.tasks import get_task
    for t in d['tasks']:
        assert d['data'][t] and d['metrics'][t] in get_task(t).metrics and d['notes'][t], t
    assert 'stand-in' in d['notes']['alm-bench'] and d['metrics']['alm-bench'] == 'standin_score'
