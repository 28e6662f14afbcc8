"""Shared pytest set-up: offline hub, CPU DeepSpeed, and a private PANGEA_HOME per test session."""
import contextlib, os, signal, subprocess, sys, threading, time
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('DS_ACCELERATOR', 'cpu')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('MPLBACKEND', 'Agg')

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def env1():
    "Environment for a subprocess with one thread: tiny models on a shared 2-core machine."
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}

@pytest.fixture(scope='module')
def one_torch_thread():
    "torch in this process on one thread for a module's tests (use with `pytestmark = pytest.mark.usefixtures(...)`)."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

@contextlib.contextmanager
def pangea_serve(model, batch_size:int = 8):
    "`pangea serve MODEL` as a separate process on a free port; yields its base URL, stops it with SIGINT after."
    p = subprocess.Popen([str(BIN/'pangea'), 'serve', '--model', str(model), '--port', '0', '--batch-size', str(batch_size)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env1())
    url, t0, seen = None, time.time(), []
    while time.time() - t0 < 120:
        line = p.stdout.readline()
        if not line and p.poll() is not None: break
        seen.append(line)
        if line.startswith('pangea serve:'): url = line.rsplit(' at ', 1)[1].strip(); break
    if url is None:
        p.kill(); pytest.fail('pangea serve did not start:\n' + ''.join(seen[-20:]))
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()   # keep draining its output
    try: yield url
    finally:
        p.send_signal(signal.SIGINT)
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill()

@pytest.fixture(scope='session', autouse=True)
def pangea_home(tmp_path_factory):
    "Every test session writes under its own PANGEA_HOME, never the user's cache."
    home = tmp_path_factory.mktemp('pangea_home')
    old = os.environ.get('PANGEA_HOME'); os.environ['PANGEA_HOME'] = str(home)
    yield home
    if old is None: os.environ.pop('PANGEA_HOME', None)
    else: os.environ['PANGEA_HOME'] = old

@pytest.fixture(scope='session')
def shared():
    "The shared development material beside the checkout; tests that need it skip when it is absent."
    from pangea_nb.config import shared_path
    p = shared_path()
    if p is None: pytest.skip('../shared is not beside this checkout (users who only cloned the project do not have it)')
    return p

@pytest.fixture(scope='session')
def tiny_checkpoint(pangea_home, tmp_path_factory):
    """A tiny LLaVA trained ONCE per test session and shared by every later test (evaluation, sweeps, serving).

    Stage 2 of the tiny preset, 30 steps on 480 samples of the level-1 synthetic world in all its languages, one
    process. Returns the model folder: a Hugging Face LLaVA folder (config.json, model.safetensors, tokenizer,
    chat_template.jinja, processor_config.json) that `load_pretrained`, `LlavaForConditionalGeneration.from_pretrained`
    and `AutoProcessor.from_pretrained` load offline without remote code. The project tokenizer it uses is cached in
    the session's PANGEA_HOME, so `load_pretrained('tiny')` afterwards reuses it.
    """
    from pangea_nb.config import RunConfig
    from pangea_nb.train.stages import run_stages
    out = tmp_path_factory.mktemp('tiny_checkpoint')
    cfg = RunConfig.preset('tiny', output_dir=str(out))
    cfg = cfg.replace(data=cfg.data.replace(n_samples=480, english_ratio=None),
                      train=cfg.train.replace(max_steps=30, micro_batch_size=16, lr=2e-3, log_every=5, warmup_ratio=0.1))
    return run_stages(cfg, out, progress=False)
