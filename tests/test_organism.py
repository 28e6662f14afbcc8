"""The transfer organism (nbs/57_organism, issue 20): the stage-0 cross-lingual signal is the share the config says,
off means the corpus of before, the native test questions never pass through the translator, and the probe's report
on a smoke-sized rehearsal of its spec."""
import hashlib, json, re
from pathlib import Path

import pytest
import yaml

from pangea_nb.cli import main as pangea_main
from pangea_nb.config import ConfigError, RunConfig, SweepConfig
from pangea_nb.data import translate as tr
from pangea_nb.data.schema import read_samples
from pangea_nb.data.synth import render_spec
from pangea_nb.sweep.organism import probe_report
from pangea_nb.sweep.rehearse import rehearsal_root
from pangea_nb.sweep.runner import base_config
from pangea_nb.sweep.template import eval_world, resolve_run, shared_config
from pangea_nb.train.stages import stage0_samples

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r'[\u4e00-\u9fff]')
# sha1 of the first 200 stage-0 documents of the demo's shared stage 0 (sweeps/demo_english_ratio.yaml), made by the
# code before pretrain.parallel_share / code_switch_share existed (main at a196d3c)
DEMO_STAGE0_SHA1 = '4e75b2234b4d84c7266590c112077577a3ab9177'


def corpus_sha1(docs):
    return hashlib.sha1('\n\0'.join(f'{d.id}|{d.language}|{d.turns[0].text}' for d in docs).encode()).hexdigest()


def demo_stage0():
    spec = SweepConfig.load(ROOT/'sweeps'/'demo_english_ratio.yaml')
    return shared_config(resolve_run(base_config(spec).set('data.english_ratio', 0.4))).stage_configs()[0]


def test_option_off_leaves_the_demo_corpus_byte_identical():
    c0 = demo_stage0()
    assert c0.pretrain.parallel_share == 0 and c0.pretrain.code_switch_share == 0   # the demo does not set them
    docs = stage0_samples(c0, 200)
    assert corpus_sha1(docs) == DEMO_STAGE0_SHA1
    explicit = c0.set('pretrain.parallel_share', 0.0).set('pretrain.code_switch_share', 0.0)
    assert corpus_sha1(stage0_samples(explicit, 200)) == DEMO_STAGE0_SHA1
    assert not any(d.meta for d in docs)


@pytest.mark.parametrize('n,par,cs', [(200, 0.25, 0.25), (57, 0.1, 0.3), (40, 0.0, 1.0)])
def test_cross_lingual_shares_are_exact(n, par, cs):
    c = demo_stage0().set('pretrain.parallel_share', par).set('pretrain.code_switch_share', cs)
    docs = stage0_samples(c, n)
    kinds = [d.meta.get('kind', 'mono') for d in docs]
    assert kinds.count('parallel') == round(par * n) and kinds.count('code_switch') == round(cs * n)
    assert all(d.meta['partner'] != d.language for d in docs if d.meta)
    for d in docs:   # a document pairing Chinese with a Latin-script language holds both scripts; a monolingual one does not
        text = d.turns[0].text
        if d.meta and 'zh' in (d.language, d.meta['partner']) and 'ar' not in (d.language, d.meta['partner']):
            assert CJK.search(text) and re.search('[A-Za-z]', text), (d.meta, text[:200])
        if not d.meta and d.language in ('en', 'sw'): assert not CJK.search(text)
    assert c.pretrain.parallel_share + c.pretrain.code_switch_share <= 1


def test_bad_shares_are_config_errors():
    with pytest.raises(ConfigError, match='parallel_share \\+ code_switch_share'):
        RunConfig.preset('tiny').set('pretrain.parallel_share', 0.7).set('pretrain.code_switch_share', 0.4)
    one_lang = RunConfig.preset('tiny').set('data.synth_langs', ['en']).set('pretrain.parallel_share', 0.5)
    with pytest.raises(ConfigError, match='need English and another language'):
        stage0_samples(one_lang, 10)


def test_native_test_questions_never_pass_through_the_translator(tmp_path, monkeypatch):
    calls = []
    real = tr._glossary_sample
    spy = lambda self, s, tgt: calls.append((s.id, tgt)) or real(self, s, tgt)
    monkeypatch.setattr(tr, '_glossary_sample', spy)
    monkeypatch.setattr(tr.GlossaryTranslator, 'translate_samples', lambda self, *a, **k: calls.append('translate_samples') or tr._glossary_samples(self, *a, **k))
    spec = SweepConfig.load(ROOT/'sweeps'/'organism_english_ratio.yaml')
    cfg = resolve_run(base_config(spec).set('eval.synthetic_n', 20))
    d = eval_world(cfg, tmp_path)
    assert calls == []                                                  # writing the test split called no translator
    items = [s for s in read_samples(d/'test.jsonl') if s.language != 'en']
    assert {s.language for s in items} == {'sw', 'zh', 'ar'} and len(items) == 60
    assert all('translation' not in s.meta and 'translated_from' not in s.provenance for s in items)
    # the translator's version of the same test specs: exact at rate 0 (same concept), different where errors strike
    t0, t3 = tr.GlossaryTranslator(0.0), tr.GlossaryTranslator(0.3)
    differ = 0
    for s in items:
        en = render_spec(s.meta['world'], 'en')
        exact = next(t0.translate_samples([en], s.language))
        noisy = list(t3.translate_samples([en], s.language, on_error=lambda e: None))   # an emptied answer is a failed translation
        assert [t.text for t in exact.turns] == [t.text for t in s.turns]
        differ += not noisy or [t.text for t in noisy[0].turns] != [t.text for t in s.turns]
    assert len(calls) > 0 and differ >= 10                                  # the spy does see translations when there are any


def test_probe_report_on_a_smoke_rehearsal(tmp_path, capsys):
    # the spec as committed, with its runs under tmp_path (test_rehearse's dry run checks that the default folder stays empty)
    d = yaml.safe_load((ROOT/'sweeps'/'organism_transfer_probe.yaml').read_text())
    d.update(out_dir=str(tmp_path/'runs'/'organism_transfer_probe'), template=str(ROOT/d['template']))
    spec = tmp_path/'probe.yaml'
    spec.write_text(yaml.safe_dump(d))
    code = pangea_main(['sweep', str(spec), '--rehearse', '--points', '2', '--quiet'])
    assert code == 0, capsys.readouterr().err[-3000:]
    src = SweepConfig.load(spec)
    root = rehearsal_root(src)
    assert root.parent == tmp_path/'runs'
    res = probe_report(src.replace(out_dir=str(root)), out_dir=tmp_path/'figures')
    t = res['table']
    # --points 2 keeps the grid's first and last points: no signal (seed 0) and both shares 0.25 (seed 2)
    assert set(t['pretrain.code_switch_share']) == {0.0, 0.25} and set(t.metric) == {'exact_match', 'loglik_accuracy'}
    assert set(t.lang) == {'sw', 'zh', 'ar', 'mul', 'en'} and (t.n_runs == 1).all()
    base = t[(t['pretrain.code_switch_share'] == 0)]
    assert (base.delta == 0).all()                                      # the no-signal cell against itself
    assert t[t['pretrain.code_switch_share'] > 0].delta.isna().all()    # no seed of the no-signal cell to pair with
    run = t[(t.metric == 'loglik_accuracy') & (t['pretrain.code_switch_share'] == 0)].set_index('lang')['mean']
    assert run['mul'] == pytest.approx(run[['sw', 'zh', 'ar']].mean())
    ll = t[t.metric == 'loglik_accuracy']
    assert ll.chance.between(0, 100, inclusive='neither').all()
    csv = (tmp_path/'figures'/'organism_transfer_probe.csv').read_text()
    assert 'n_runs' in csv.splitlines()[0] and (tmp_path/'figures'/'organism_transfer_probe.png').stat().st_size > 0
    # the sensitivity gain table refuses a sweep without its mechanism grid, in one line (here: the probe's rehearsal)
    capsys.readouterr()
    (tmp_path/'rehearsed.yaml').write_text(yaml.safe_dump(src.replace(out_dir=str(root)).to_dict()))
    assert pangea_main(['sweep', 'gain', str(tmp_path/'rehearsed.yaml'), '--out', str(tmp_path/'figures')]) == 1
    err = capsys.readouterr().err
    assert "needs grid keys ['data.translation_error', 'data.english_ratio']" in err and 'Traceback' not in err
