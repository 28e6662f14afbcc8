"""Evaluation harness: every loader on the format samples and on full-release layouts written here with their quirks;
gold answers score 100; a constant answer scores the label share counted from the raw files; batch-size invariance and
resume of `pangea eval run`; score/report/predict/contamination commands end to end."""
import csv, json, random, subprocess, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_llava import build_tiny_llava

from pangea_nb.contracts import read_jsonl, append_jsonl, read_results
from pangea_nb.eval.tasks import get_task, select_items, resolve_images, score_predictions
from pangea_nb.cli import main as pangea_main


def run_cli(*argv, capsys=None):
    code = pangea_main([str(a) for a in argv])
    out = capsys.readouterr() if capsys else None
    return code, out


# ---------------------------------------------------------------- releases in the official layouts, with quirks
def png(path, colour):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True); Image.new('RGB', (12, 9), colour).save(path, format='PNG')


def write_mgsm(root, rng):
    root = root / 'mgsm'; root.mkdir(parents=True)
    for lang in ('bn', 'en', 'sw', 'zh'):
        rows = []
        for i in range(250):
            q = f'{lang} question {i} with an unbalanced "quote and a \'tick'
            rows.append(f'{q}\t{rng.choice(["18", "3", "70000", "1,200"])}')
        (root / f'mgsm_{lang}.tsv').write_text('\n'.join(rows) + '\n', encoding='utf-8')
    (root / 'README.md').write_text('not data')


def write_xcopa(root, rng):
    for lang in ('et', 'ht', 'qu', 'sw', 'zh'):
        for split, n in (('val', 10), ('test', 25)):
            p = root / 'data' / lang / f'{split}.{lang}.jsonl'; p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(''.join(json.dumps(dict(premise=f'{lang} {split} premise {i}', choice1=f'{lang} one {i}', choice2=f'{lang} two {i}',
                                                 question=rng.choice(['cause', 'effect']), label=rng.randint(0, 1), idx=i, changed=False),
                                            ensure_ascii=False) + '\n' for i in range(n)), encoding='utf-8')
    (root / 'data-gmt').mkdir()                                    # translate-test folder of the release: ignored


def write_xstorycloze(root, rng):
    cols = ['InputStoryid', 'InputSentence1', 'InputSentence2', 'InputSentence3', 'InputSentence4',
            'RandomFifthSentenceQuiz1', 'RandomFifthSentenceQuiz2', 'AnswerRightEnding']
    for lang in ('en', 'ru', 'sw', 'my'):
        for split, n in (('train', 6), ('eval', 15)):
            lines = ['\t'.join(cols)] + ['\t'.join([f'story-{i:04d}', f'He said "go.', 'She went.', 'It "rained".', 'Done.',
                                                    f'{lang} end A {i}', f'{lang} end B {i}', str(rng.randint(1, 2))]) for i in range(n)]
            (root / f'spring2016.val.{lang}.tsv.split_20_80_{split}.tsv').write_text('\n'.join(lines) + '\n', encoding='utf-8')


def write_tydiqa(root, rng):
    for name in ('english', 'swahili', 'finnish', 'korean'):
        qas = [{'id': f'{name}-{rng.randint(-10**18, 10**18)}-{i}', 'question': f'{name} q {i}?',
                'answers': [{'text': f'answer {i}', 'answer_start': 0}, {'text': f'the answer {i}', 'answer_start': 0}]} for i in range(7)]
        d = {'version': None, 'data': [{'title': 'T', 'paragraphs': [{'context': 'ctx answer', 'qas': qas}]}]}
        (root / name).mkdir(parents=True); (root / name / f'{name}_tydiqa_dev.json').write_text(json.dumps(d, ensure_ascii=False))


def write_flores(root, rng):
    d = root / 'flores200_dataset' / 'devtest'; d.mkdir(parents=True)
    (root / 'flores200_dataset' / 'dev').mkdir()
    for code in ('eng_Latn', 'swh_Latn', 'zho_Hans', 'zho_Hant', 'jpn_Jpan', 'kor_Hang', 'arb_Latn', 'ace_Arab'):
        (d / f'{code}.devtest').write_text(''.join(f'{code} sentence {i} 「x」.\n' for i in range(12)), encoding='utf-8')


def write_mmmlu(root, rng):
    (root / 'test').mkdir(parents=True)
    for code in ('AR-XY', 'SW-KE', 'ZH-CN', 'YO-NG'):
        with open(root / 'test' / f'mmlu_{code}.csv', 'w', newline='', encoding='utf-8') as f:
            w = csv.writer(f); w.writerow(['', 'Question', 'A', 'B', 'C', 'D', 'Answer', 'Subject'])
            for i in range(20):
                w.writerow([i, f'{code} question {i},\nsecond line "quoted"', 'None', 'NA', f'c{i}', f'd{i}', rng.choice('ABCD'), 'college_physics'])


def write_marvl(root, rng, images):
    for lang in ('id', 'sw', 'ta', 'tr', 'zh'):
        recs = []
        for i in range(8):
            c = f'{i % 3}-concept'
            recs.append(dict(concept=c, language=lang, caption=f'{lang} caption {i}', left_img=f'{i % 3}-{i}.jpg', right_img=f'{i % 3}-{i + 1}.jpg',
                             annotator_info={}, chapter='ch', id=f'{lang}-{i}', label=rng.random() < 0.5))
            for im in (recs[-1]['left_img'], recs[-1]['right_img']):
                png(images / 'marvl-images' / lang / 'images' / c / im, (i * 20, 0, 0))
        p = root / 'marvl-annotations' / f'marvl-{lang}.jsonl'; p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in recs), encoding='utf-8')
    nl = root / 'nlvr2' / 'data'; nl.mkdir(parents=True)
    lines = []
    for k in range(5):
        for s in (0, 1):
            lines.append(json.dumps(dict(identifier=f'test1-{k}-0-{s}', sentence=f'There are {k} dogs.', label=rng.choice(['True', 'False']),
                                         left_url='http://x', right_url='http://y', writer='w')))
        for j in (0, 1): png(images / 'test1' / f'test1-{k}-0-img{j}.png', (0, k * 30, 0))
    (nl / 'test1.json').write_text('\n'.join(lines) + '\n')
    (nl / 'dev.json').write_text(lines[0].replace('test1', 'dev') + '\n')


def write_xgqa(root, rng, images):
    qids = [str(20000000 + i) for i in range(12)]
    for lang in ('en', 'de', 'bn', 'ko'):
        for split in ('dev', 'test', 'train_1'):
            d = root / 'data' / 'few_shot' / lang; d.mkdir(parents=True, exist_ok=True)
            (d / f'{split}.json').write_text(json.dumps({q: dict(question=f'{lang} {split} q{q}?', answer=rng.choice(['yes', 'no', 'red']),
                                                               imageId=f'n{int(q) % 4}', fullAnswer='x', isBalanced=True) for q in qids}, ensure_ascii=False))
        z = root / 'data' / 'zero_shot'; z.mkdir(parents=True, exist_ok=True)
        body = ', '.join(f'"{q}": ' + json.dumps(dict(question=f'{lang} q{q}', answer='yes' if int(q) % 2 else 'no', imageId=f'n{int(q) % 4}'),
                                                   ensure_ascii=False) for q in qids)
        body += ', "20000000": ' + json.dumps(dict(question=f'{lang} q20000000', answer='no', imageId='n0'), ensure_ascii=False)   # identical repeat
        (z / f'testdev_balanced_questions_{lang}.json').write_text('{' + body + '}', encoding='utf-8')
    for k in range(4): png(images / f'n{k}.jpg', (0, 0, k * 50))


RELEASES = {  # task -> (writer, split, expected items per language, expected languages)
    'mgsm': (write_mgsm, None, 250, {'bn', 'en', 'sw', 'zh'}),
    'xcopa': (write_xcopa, 'test', 25, {'et', 'ht', 'qu', 'sw', 'zh'}),
    'xstorycloze': (write_xstorycloze, None, 15, {'en', 'ru', 'sw', 'my'}),
    'tydiqa': (write_tydiqa, None, 7, {'en', 'sw', 'fi', 'ko'}),
    'flores': (write_flores, None, 12, {'sw', 'zh', 'zh-Hant', 'ja', 'ko'}),
    'mmmlu': (write_mmmlu, None, 20, {'ar', 'sw', 'zh', 'yo'}),
    'marvl': (write_marvl, None, None, {'id', 'sw', 'ta', 'tr', 'zh', 'en'}),
    'xgqa': (write_xgqa, None, 12, {'en', 'de', 'bn', 'ko'}),
}


@pytest.fixture(scope='module')
def releases(tmp_path_factory):
    base = tmp_path_factory.mktemp('releases'); rng = random.Random(5)
    out = {}
    for task, (writer, *_) in RELEASES.items():
        root, images = base / task, base / f'{task}-images'
        root.mkdir()
        writer(root, rng, images) if task in ('marvl', 'xgqa') else writer(root, rng)
        out[task] = (root, images if images.exists() else None)
    return out


# ---------------------------------------------------------------- independent label counting from the raw files
def raw_labels(task, root):
    "{id: gold label as the raw files state it}, read here without the loaders (for the constant-answer check)."
    if task == 'xcopa':
        return {f'{p.parent.name}/test/{json.loads(l)["idx"]}': json.loads(l)['label']
                for p in (root / 'data').glob('*/test.*.jsonl') for l in p.read_text().splitlines()}
    if task == 'xstorycloze':
        out = {}
        for p in root.glob('*split_20_80_eval.tsv'):
            lang = p.name.split('.')[2]
            for l in p.read_text(encoding='utf-8').splitlines()[1:]:
                f = l.split('\t'); out[f'{lang}/eval/{f[0]}'] = int(f[7]) - 1
        return out
    if task == 'mmmlu':
        codes = {'AR-XY': 'ar', 'SW-KE': 'sw', 'ZH-CN': 'zh', 'YO-NG': 'yo'}
        out = {}
        for p in (root / 'test').glob('*.csv'):
            with open(p, newline='', encoding='utf-8') as f:
                for r in csv.DictReader(f): out[f'{codes[p.stem[5:]]}/test/{r[""]}'] = 'ABCD'.index(r['Answer'])
        return out
    if task == 'marvl':
        out = {f'{p.stem[6:]}/test/{json.loads(l)["id"]}': int(not json.loads(l)['label'])
               for p in (root / 'marvl-annotations').glob('*.jsonl') for l in p.read_text().splitlines()}
        out.update({f'en/test/{json.loads(l)["identifier"]}': int(json.loads(l)['label'] == 'False')
                    for l in (root / 'nlvr2' / 'data' / 'test1.json').read_text().splitlines()})
        return out
    raise KeyError(task)


CONSTANT = {'xcopa': 'A', 'xstorycloze': 'A', 'mmmlu': 'A', 'marvl': 'true'}   # the answer that means option/label 0


def load(task, releases, **kw):
    root, images = releases[task]
    t = get_task(task)
    items = select_items(t, root, **kw)
    if images: items, _ = resolve_images(t, items, images)
    return t, items


@pytest.mark.parametrize('task', list(RELEASES))
def test_loader_official_layout(task, releases):
    "Counts per language, ids unique across languages and splits, gold answers score 100 on every metric."
    writer, split, per_lang, langs = RELEASES[task]
    t, items = load(task, releases, split=split)
    got = {}
    for it in items: got[it.lang] = got.get(it.lang, 0) + 1
    assert set(got) == langs, got
    if per_lang: assert set(got.values()) == {per_lang}, got
    assert len({it.id for it in items}) == len(items)
    assert all(it.id.startswith(f'{it.lang}/{it.split}/') for it in items)
    res = score_predictions(t, items, {it.id: it.answer for it in items})
    assert res['summary']['missing'] == 0 and res['summary']['unparsed'] == 0
    assert all(r['value'] == pytest.approx(100.0) for r in res['results']), res['results']


@pytest.mark.parametrize('task', list(CONSTANT))
def test_constant_answer_scores_label_share(task, releases):
    t, items = load(task, releases)
    labels = raw_labels(task, releases[task][0])
    assert {it.id for it in items} == set(labels)
    res = score_predictions(t, items, {it.id: CONSTANT[task] for it in items})
    for r in res['results']:
        if r['lang'] == 'mul': continue
        ids = [i for i in labels if i.startswith(r['lang'] + '/')]
        assert r['value'] == pytest.approx(100 * sum(labels[i] == 0 for i in ids) / len(ids))


def test_release_quirks(releases, tmp_path):
    # MGSM: the unbalanced quote survives (QUOTE_NONE); ids are row numbers
    _, items = load('mgsm', releases)
    assert items[0].question.endswith('"quote and a \'tick') and items[0].id == 'bn/test/0'
    # XCOPA: idx restarts per language and split, yet every id is distinct
    _, val = load('xcopa', releases, split='val'); _, test = load('xcopa', releases, split='test')
    assert {i.id.split('/')[2] for i in val} <= {i.id.split('/')[2] for i in test} and not {i.id for i in val} & {i.id for i in test}
    # xGQA: the same question ids in every language and split; the identical repeated key is dropped and counted
    t = get_task('xgqa'); items = select_items(t, releases['xgqa'][0])
    assert len(items) == 48 and t.dropped_repeats == 4
    assert len(select_items(t, releases['xgqa'][0], split='dev')) == 48
    # FLORES: script variants and unknown languages are reported, not silently merged
    t = get_task('flores'); select_items(t, releases['flores'][0])
    assert sorted(n for n, _ in t.skipped_files) == ['ace_Arab.devtest', 'arb_Latn.devtest']
    # MMMLU: options 'None' / 'NA' stay strings, multi-line questions stay whole
    _, items = load('mmmlu', releases)
    assert items[0].options[:2] == ['None', 'NA'] and '\nsecond line "quoted"' in items[0].question
    # MaRVL: English from NLVR2 with string labels
    _, items = load('marvl', releases)
    assert sum(i.lang == 'en' for i in items) == 10 and {i.answer for i in items} == {'true', 'false'}


def test_loaders_on_format_samples(shared):
    fmt = shared / 'formats'
    cases = [('mgsm', fmt / 'mgsm', None, {'en': 3, 'sw': 3}), ('xcopa', fmt / 'xcopa', 'val', {'sw': 3, 'zh': 3}),
             ('marvl', fmt / 'marvl', None, {'id': 3}), ('xgqa', fmt / 'xgqa', 'dev', None), ('tydiqa', fmt / 'tydiqa_goldp', None, None)]
    for task, root, split, counts in cases:
        t = get_task(task); items = select_items(t, root, split=split)
        got = {}
        for it in items: got[it.lang] = got.get(it.lang, 0) + 1
        if counts: assert got == counts, (task, got)
        assert len({i.id for i in items}) == len(items)
        res = score_predictions(t, items, {it.id: it.answer for it in items})
        assert res['summary']['missing'] == 0 and all(r['value'] == 100.0 for r in res['results']), (task, res['results'])
    xg = select_items(get_task('xgqa'), fmt / 'xgqa', split='dev')
    assert {i.lang for i in xg} == {'bn', 'en'}
    # the xGQA sample's question ids are the same in both languages: the prefix keeps them apart
    assert {i.id.split('/')[2] for i in xg if i.lang == 'bn'} == {i.id.split('/')[2] for i in xg if i.lang == 'en'}


def test_missing_images_one_error_or_skip(releases, tmp_path):
    root, images = releases['xgqa']
    t = get_task('xgqa'); items = select_items(t, root)
    (images / 'n3.jpg').rename(images / 'n3.bak')
    try:
        with pytest.raises(FileNotFoundError, match='12 of 48 items have missing images'):
            resolve_images(t, items, images)
        kept, miss = resolve_images(t, select_items(t, root), images, skip_missing=True, rejects=tmp_path / 'rej.jsonl')
        assert len(kept) == 36 and len(miss) == 12 and len(read_jsonl(tmp_path / 'rej.jsonl')) == 12
    finally:
        (images / 'n3.bak').rename(images / 'n3.jpg')


# ---------------------------------------------------------------- CLI with a model
@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp('tiny_llava')
    build_tiny_llava(d)
    return d


def strip_scores(path):
    return [(r['id'], r['prediction'], {k: round(v, 3) for k, v in (r.get('scores') or {}).items()}) for r in read_jsonl(path)]


@pytest.mark.parametrize('task,mode,limit', [('xcopa', 'loglik', 4), ('xcopa', 'generate', 2), ('marvl', 'generate', 2), ('marvl', 'loglik', 2)])
def test_run_batch_size_invariant(task, mode, limit, releases, tiny_ckpt, tmp_path, capsys):
    root, images = releases[task]
    base = ['eval', 'run', '--task', task, '--data', root, '--model', tiny_ckpt, '--mode', mode, '--limit', limit, '--max-new-tokens', 5, '--no-cache']   # both batch sizes really run
    if images: base += ['--images', images]
    assert run_cli(*base, '--out', tmp_path / 'b1.jsonl', '--batch-size', 1)[0] == 0
    assert run_cli(*base, '--out', tmp_path / 'b8.jsonl', '--batch-size', 8)[0] == 0
    a, b = strip_scores(tmp_path / 'b1.jsonl'), strip_scores(tmp_path / 'b8.jsonl')
    assert len(a) == limit * len(RELEASES[task][3]) and a == b


def test_run_resumes_and_scores(releases, tiny_ckpt, tmp_path, capsys):
    root, _ = releases['xcopa']
    args = ['eval', 'run', '--task', 'xcopa', '--data', root, '--model', tiny_ckpt, '--mode', 'loglik', '--limit', 3, '--batch-size', 4]
    run_cli(*args, '--out', tmp_path / 'full.jsonl')
    full = strip_scores(tmp_path / 'full.jsonl')
    # a run killed mid-write: 5 complete lines and a torn sixth
    lines = (tmp_path / 'full.jsonl').read_text().splitlines()
    (tmp_path / 'part.jsonl').write_text('\n'.join(lines[:5]) + '\n' + lines[5][:17])
    (tmp_path / 'part.jsonl.meta.json').write_text((tmp_path / 'full.jsonl.meta.json').read_text())
    capsys.readouterr()
    assert run_cli(*args, '--out', tmp_path / 'part.jsonl')[0] == 0
    assert 'wrote 10 predictions (5 already done)' in capsys.readouterr().out
    assert strip_scores(tmp_path / 'part.jsonl') == full
    # the limited run scored against its own selection: nothing missing; without --limit the rest is missing
    code, out = run_cli('eval', 'score', '--task', 'xcopa', '--data', root, '--predictions', tmp_path / 'full.jsonl', '--limit', 3,
                        '--json', '--out', tmp_path / 'res.json', capsys=capsys)
    res = json.loads(out.out)
    assert code == 0 and res['summary']['missing'] == 0 and res['summary']['scored'] == 15 and res['mode'] == 'loglik'
    assert len(read_results(tmp_path / 'res.json')) == len(res['results'])
    code, out = run_cli('eval', 'score', '--task', 'xcopa', '--data', root, '--predictions', tmp_path / 'full.jsonl', '--json', capsys=capsys)
    assert json.loads(out.out)['summary']['missing'] == 125 - 15
    # a rerun with other settings is refused
    code, out = run_cli(*args[:-4], '--mode', 'generate', '--out', tmp_path / 'full.jsonl', capsys=capsys)
    assert code == 1 and 'other settings' in out.err
    # report
    code, out = run_cli('eval', 'report', tmp_path / 'res.json', '--out', tmp_path / 'rep', capsys=capsys)
    assert code == 0 and 'English excluded' in out.out and (tmp_path / 'rep' / 'eval_report.png').exists()


def test_cli_errors(releases, tmp_path, capsys):
    root, images = releases['marvl']
    code, out = run_cli('eval', 'run', '--task', 'marvl', '--data', root, '--model', tmp_path, '--out', tmp_path / 'p.jsonl', capsys=capsys)
    assert code == 1 and 'pass --images DIR' in out.err
    code, out = run_cli('eval', 'run', '--task', 'mgsm', '--data', releases['mgsm'][0], '--model', tmp_path, '--out', tmp_path / 'p.jsonl',
                        '--mode', 'loglik', capsys=capsys)
    assert code == 1 and 'not multiple choice' in out.err
    code, out = run_cli('eval', 'score', '--task', 'mgsm', '--data', releases['mgsm'][0], '--predictions', tmp_path / 'none.jsonl', '--judge', 'x', capsys=capsys)
    assert code == 1 and 'not judge-scored' in out.err
    code, out = run_cli('eval', 'inspect', '--task', 'marvl', '--data', root, '--images', images, '--json', '--dump', tmp_path / 'd.jsonl', capsys=capsys)
    res = json.loads(out.out)
    assert code == 0 and res['total'] == 50 and res['missing_images'] == 0
    rec = read_jsonl(tmp_path / 'd.jsonl')[0]
    assert {'id', 'lang', 'question', 'options', 'answer', 'images'} <= set(rec) and isinstance(rec['answer'], str)


def test_predict_console_script(tiny_ckpt, releases):
    img = releases['xgqa'][1] / 'n1.jpg'
    r = subprocess.run([str(Path(sys.executable).parent / 'pangea'), 'predict', '--model', str(tiny_ckpt), '--image', str(img),
                        '--prompt', 'Picha hii ina rangi gani?', '--max-new-tokens', '4'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != '' or r.stdout == '\n'   # random weights: any text, but the command ran end to end


def test_contamination_llava_jsonl(releases, tmp_path, capsys):
    root, images = releases['xgqa']
    (tmp_path / 'img.jpg').write_bytes((images / 'n2.jpg').read_bytes())
    recs = [{'id': 'x', 'image': 'img.jpg', 'conversations': [{'from': 'human', 'value': '<image>\nde q20000003'}, {'from': 'gpt', 'value': 'ja'}]},
            {'id': 'y', 'conversations': [{'from': 'human', 'value': 'unrelated words only'}, {'from': 'gpt', 'value': 'ok'}]}]
    append_jsonl(tmp_path / 'mix.jsonl', recs)
    code, out = run_cli('eval', 'contamination', tmp_path / 'mix.jsonl', '--task', 'xgqa', '--data', root, '--images', images,
                        '--langs', 'de', '--json', capsys=capsys)
    res = json.loads(out.out)
    # image n2 is used by questions whose id % 4 == 2 (3 of 12); 'de q20000003' is question 20000003 (id % 4 == 3)
    assert code == 0 and res['flagged_by_image'] == 3 and res['flagged_by_question'] == 1 and res['flagged'] == 4


def test_synthetic_task_run_and_score(tiny_ckpt, tmp_path, capsys):
    "The synthetic world's test split through `eval run` (images found in the world folder) and `eval score`."
    from pangea_nb.data.synth import write_world, synth_answer_correct
    paths = write_world(tmp_path / 'world', n_train=4, n_test=24, progress=False)
    args = ['eval', 'run', '--task', 'synthetic', '--data', paths.root, '--model', tiny_ckpt, '--max-new-tokens', 4]
    assert run_cli(*args, '--out', tmp_path / 'a.jsonl', '--batch-size', 1)[0] == 0
    assert run_cli(*args, '--out', tmp_path / 'b.jsonl', '--batch-size', 8)[0] == 0
    assert strip_scores(tmp_path / 'a.jsonl') == strip_scores(tmp_path / 'b.jsonl')
    preds = {r['id']: r['prediction'] for r in read_jsonl(tmp_path / 'a.jsonl')}
    capsys.readouterr()
    code, out = run_cli('eval', 'score', '--task', 'synthetic', '--data', paths.root, '--predictions', tmp_path / 'a.jsonl', '--json', capsys=capsys)
    res = json.loads(out.out)
    recs = [json.loads(l) for l in paths.test.read_text().splitlines()]
    right = sum(synth_answer_correct(preds[f'{r["language"]}/test/{r["id"]}'], r) for r in recs if preds[f'{r["language"]}/test/{r["id"]}'].strip())
    scored = res['summary']['scored']
    assert code == 0 and res['summary']['missing'] == 0 and scored == 24
    per_lang = {x['lang']: (x['value'], x['n']) for x in res['results'] if x['lang'] != 'mul'}
    assert sum(v * n / 100 for v, n in per_lang.values()) == pytest.approx(right)


# ---------------------------------------------------------------- published numbers, as transcribed
def test_published_numbers_match_paper_numbers(shared):
    "Every Pangea-7B row of PAPER_NUMBERS.md's PangeaBench table is in `PUBLISHED` with the file's en/mul."
    import re
    from pangea_nb.eval.cli import PUBLISHED, published_for
    text = (shared / 'PAPER_NUMBERS.md').read_text()
    rows = {'xChatBench': 'xchat', 'M-LLaVA-Bench': 'mllava', 'CVQA': 'cvqa', 'MaRVL': 'marvl', 'XM100': 'xm100',
            'xGQA': 'xgqa', 'MaXM': 'maxm', 'xMMMU': 'xmmmu', 'M3Exam': 'm3exam', '**multimodal average**': 'multimodal_average'}
    for name, task in rows.items():
        m = re.search(r'^\| ' + re.escape(name) + r'[^|]*\|[^|]*\| \**([\d.]+) / ([\d.]+)\** \|$', text, re.M)
        assert m, f'PAPER_NUMBERS.md has no Pangea-7B row for {name}'
        assert PUBLISHED['pangea-7b'][task] == (float(m[1]), float(m[2])), task
    flat = ' '.join(text.split())
    assert 'MGSM 82.0/47.4 vs 48.8/40.4' in flat and published_for('Pangea-7B')['mgsm'] == (82.0, 47.4)
    assert 'GPT-4o 68.6/64.6' in flat and PUBLISHED['gpt-4o']['multimodal_average'] == (68.6, 64.6)
