"""`pangea serve` probed as a hostile or careless client would: every malformed request gets a 4xx with a JSON
message (never a closed connection), a decompression-bomb image is refused on its header, and 50 concurrent
clients all get an answer (200, or 503 when over the limit)."""
import base64, json, socket, struct, sys, time, zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx, pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import pangea_serve
from tiny_llava import build_tiny_llava


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp('probe_ckpt')
    build_tiny_llava(d)
    with pangea_serve(d) as url: yield url


def png_header(w, h):
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')


def user(content): return {'messages': [{'role': 'user', 'content': content}], 'max_tokens': 2}
def image_part(url): return [{'type': 'image_url', 'image_url': {'url': url}}, {'type': 'text', 'text': 'what?'}]

BOMB = 'data:image/png;base64,' + base64.b64encode(png_header(100_000, 100_000)).decode()
CHAT = [  # (body, expected status)
    ('not json', 400), ('[1, 2]', 400), ('"a string"', 400), ('null', 400), ('{"messages": "hi"}', 400), ('{}', 400),
    (json.dumps({'messages': []}), 400), (json.dumps({'messages': [1]}), 400), (json.dumps({'messages': [{'role': 'user'}]}), 400),
    (json.dumps({'messages': [{'role': 'robot', 'content': 'x'}]}), 400), (json.dumps({'messages': [{'role': 'user', 'content': 5}]}), 400),
    (json.dumps({**user('x'), 'max_tokens': 'ten'}), 400), (json.dumps({**user('x'), 'max_tokens': -1}), 400),
    (json.dumps({**user('x'), 'max_tokens': 2.5}), 400), (json.dumps({**user('x'), 'temperature': 'hot'}), 400),
    (json.dumps({**user('x'), 'temperature': 0.7}), 400), (json.dumps({**user('x'), 'n': 3}), 400),
    (json.dumps({**user('x'), 'stream': 'yes'}), 400), (json.dumps({**user('x'), 'stop': 7}), 400),
    (json.dumps({**user('x'), 'model': 'other-model'}), 404), (json.dumps({**user('x'), 'model': ['a']}), 400),
    (json.dumps(user([{'type': 'audio'}])), 400), (json.dumps(user(['just a string part'])), 400),
    (json.dumps(user(image_part('http://example.com/a.png'))), 400), (json.dumps(user(image_part('data:image/png;base64,@@@'))), 400),
    (json.dumps(user(image_part('data:text/plain;base64,aGk='))), 400), (json.dumps(user(image_part(42))), 400),
    (json.dumps(user(image_part('data:image/png;base64,' + base64.b64encode(b'not a png').decode()))), 400),
    (json.dumps(user(image_part(BOMB))), 413),
    (json.dumps({'messages': [{'role': 'user', 'content': 'a'}, {'role': 'user', 'content': 'b'}]}), 400),
    ('{"messages": [{"role": "user", "content": "x"}]', 400),                       # truncated JSON
    (b'\xff\xfe\x00garbage', 400),
]
COMPLETIONS = [('{"prompt": "x"}', 400), ('{"prompt": 3, "echo": true, "logprobs": 1, "max_tokens": 0}', 400),
               ('{"prompt": "x", "echo": "yes", "logprobs": 1, "max_tokens": 0}', 400),
               ('{"prompt": [1, 2], "echo": true, "logprobs": 1, "max_tokens": -2}', 400)]


def test_malformed_requests_get_4xx_with_a_message(server):
    with httpx.Client(timeout=30) as h:
        for path, cases in (('/chat/completions', CHAT), ('/completions', COMPLETIONS)):
            for body, status in cases:
                r = h.post(server + path, content=body, headers={'content-type': 'application/json'})
                assert r.status_code == status, (path, body[:80], r.status_code, r.text[:200])
                assert r.json()['error']['message'], body
        assert h.get(server + '/nowhere').status_code == 404 and h.get(server + '/nowhere').json()['error']['message']
        assert h.get(server + '/chat/completions').status_code == 405
        assert raw(server, b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}').startswith(b'HTTP/1.1 413')
        assert 'before decoding' in h.post(server + '/chat/completions', json=user(image_part(BOMB))).json()['error']['message']
        ok = h.post(server + '/chat/completions', json=user('still alive?'))                # the server survived every probe
        assert ok.status_code == 200 and isinstance(ok.json()['choices'][0]['message']['content'], str)
        m = h.get(server + '/models').json()['data']
        assert len(m) == 1 and m[0]['revision'] and m[0]['root']


def raw(server, request:bytes, half_close:bool = False) -> bytes:
    "Send raw bytes to the server and return what it answers (b'' if it closes without a word)."
    host, port = server.split('//')[1].split('/')[0].split(':')
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(request)
        if half_close: s.shutdown(socket.SHUT_WR)
        return s.recv(4096)


def test_half_sent_body_is_answered(server):
    # the client gives up half-way through its body: the server does not hang on it
    data = raw(server, b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"mess', True)
    assert data == b'' or data.split(b' ')[1][:1] == b'4', data[:80]


def test_fifty_concurrent_clients_all_answered(server):
    def one(i):
        with httpx.Client(timeout=120) as h:
            return h.post(server + '/chat/completions', json=user(f'question {i}')).status_code
    t0 = time.perf_counter()
    with ThreadPoolExecutor(50) as ex: codes = list(ex.map(one, range(50)))
    took = time.perf_counter() - t0
    assert set(codes) <= {200, 503} and codes.count(200) >= 1, codes
    print(f'50 concurrent clients: {codes.count(200)} answered 200, {codes.count(503)} got 503, in {took:.1f} s')
