"""dnnlib.util: URLs and the download cache, atomic writes, formatting, name resolution."""

import functools
import hashlib
import http.server
import os
import threading
import time

import pytest

import dnnlib
from dnnlib import util

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the files of the server's folder, counts the requests, and answers /cut-off.bin
    with a body shorter than its Content-Length."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path != '/cut-off.bin':
            return super().do_GET()
        self.send_response(200)
        self.send_header('Content-Length', '1000')
        self.end_headers()
        self.wfile.write(b'only the first bytes')

    def log_message(self, *args):
        pass

@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server serving tmp_path/www; yields (base_url, root, stop). The paths it was
    asked for are in http_root.requests."""
    root = tmp_path / 'www'
    root.mkdir()
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    stopped = []
    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)
    stop.requests = server.requests
    yield f'http://127.0.0.1:{server.server_address[1]}', root, stop
    stop()

def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'abc')
    with util.open_url(str(path)) as f:
        assert f.read() == b'abc'
    with util.open_url(path.as_uri()) as f:
        assert f.read() == b'abc'
    assert util.open_url(path.as_uri(), return_filename=True) == str(path)

def test_open_url_downloads_once_into_cache(http_root, tmp_path, monkeypatch):
    base, root, stop = http_root
    (root / 'net.pkl').write_bytes(b'weights')
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    url = base + '/net.pkl'
    with util.open_url(url, verbose=False) as f:
        assert f.read() == b'weights'
    md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    cached = os.listdir(tmp_path / 'cache' / 'downloads')
    assert len(cached) == 1 and cached[0].startswith(md5 + '_') and '/' not in cached[0][33:]
    assert stop.requests == ['/net.pkl']
    stop() # Offline from now on: the cached copy must be used.
    with util.open_url(url, verbose=False) as f:
        assert f.read() == b'weights'
    assert util.open_url(url, return_filename=True).endswith(cached[0])

def test_open_url_offline_fails_with_one_line(tmp_path):
    url = 'http://127.0.0.1:9/missing/inception.pkl' # Nothing listens on the discard port.
    with pytest.raises(IOError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=2, verbose=False)
    assert url in str(info.value) and '\n' not in str(info.value)
    assert os.listdir(tmp_path) == []

def test_open_url_http_error_is_not_retried(http_root, tmp_path):
    base, _root, stop = http_root
    with pytest.raises(IOError, match='404') as info:
        util.open_url(base + '/absent.npz', cache_dir=str(tmp_path / 'cache'), verbose=False)
    assert str(info.value) == f'Cannot download {base}/absent.npz: HTTP 404 File not found'
    assert stop.requests == ['/absent.npz'] and not (tmp_path / 'cache').exists()

def test_open_url_cut_off_download_is_an_error_and_not_cached(http_root, tmp_path):
    base, _root, stop = http_root
    url = base + '/cut-off.bin'
    with pytest.raises(IOError) as info:
        util.open_url(url, cache_dir=str(tmp_path / 'cache'), num_attempts=2, verbose=False)
    message = str(info.value)
    assert message.startswith(f'Cannot download {url}: ') and '1000' in message and '\n' not in message
    assert stop.requests == ['/cut-off.bin'] * 2 # Retried once.
    assert os.listdir(tmp_path / 'cache') == [] # Neither a cached file nor a temporary one.

def test_open_url_streams_with_progress_and_without_cache(http_root, tmp_path, capsys):
    base, root, stop = http_root
    (root / 'big.bin').write_bytes(bytes(range(256)) * 10000)
    with util.open_url(base + '/big.bin', cache_dir=str(tmp_path / 'cache'), cache=False) as f:
        assert f.read() == bytes(range(256)) * 10000
    assert not (tmp_path / 'cache').exists()
    captured = capsys.readouterr()
    assert captured.out == f'Downloading {base}/big.bin\n' and 'big.bin' in captured.err and '2.44M' in captured.err

def test_open_url_removes_abandoned_partial_downloads(http_root, tmp_path):
    base, root, _stop = http_root
    (root / 'net.pkl').write_bytes(b'weights')
    url = base + '/net.pkl'
    cache = tmp_path / 'cache'
    cache.mkdir()
    md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    abandoned, recent, other = (cache / f'.{md5}_net.pkl.tmp-0000000{i}' for i in range(3))
    for path in (abandoned, recent, other):
        path.write_bytes(b'partial')
    os.utime(abandoned, (time.time() - 3600, time.time() - 3600))
    os.rename(other, cache / '.0123_other.tmp-1')
    assert util.open_url(url, cache_dir=str(cache), return_filename=True, verbose=False).startswith(str(cache / md5))
    assert sorted(os.listdir(cache)) == sorted(['.0123_other.tmp-1', recent.name, f'{md5}_{url}'.replace(':', '_').replace('/', '_')])

def test_open_url_unwritable_cache_is_one_line(http_root, tmp_path):
    base, root, _stop = http_root
    (root / 'net.pkl').write_bytes(b'weights')
    (tmp_path / 'a_file.txt').write_text('')
    with pytest.raises(IOError) as info:
        util.open_url(base + '/net.pkl', cache_dir=str(tmp_path / 'a_file.txt' / 'cache'), verbose=False)
    assert str(info.value).startswith(f'Cannot download {base}/net.pkl: cannot write to the cache folder')
    assert 'DNNLIB_CACHE_DIR' in str(info.value) and '\n' not in str(info.value)

def test_make_cache_dir_path_priority(monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'env'))
    assert util.make_cache_dir_path('downloads') == str(tmp_path / 'env' / 'downloads')
    util.set_cache_dir(str(tmp_path / 'explicit'))
    try:
        assert util.make_cache_dir_path('x') == str(tmp_path / 'explicit' / 'x')
    finally:
        util.set_cache_dir(None)
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.make_cache_dir_path() == str(tmp_path / 'home' / '.cache' / 'dnnlib')

def test_atomic_write(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError):
        with util.atomic_write(str(target)) as temp:
            open(temp, 'w').write('partial')
            raise RuntimeError('interrupted')
    assert target.read_text() == 'old' and os.listdir(tmp_path) == ['out.txt']
    with util.atomic_write(str(target)) as temp:
        open(temp, 'w').write('new')
    assert target.read_text() == 'new' and os.listdir(tmp_path) == ['out.txt']

@pytest.mark.parametrize('seconds, text', [
    (0.4, '0s'), (59, '59s'), (60, '1m 00s'), (3599, '59m 59s'), (3600, '1h 00m 00s'),
    (86399, '23h 59m 59s'), (86400 + 3600 + 61, '1d 01h 01m'),
])
def test_format_time(seconds, text):
    assert util.format_time(seconds) == text

def test_easydict_and_names():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    del d.a
    with pytest.raises(AttributeError):
        _ = d.a
    assert util.get_obj_by_name('np.float32').__name__ == 'float32'
    opt = util.construct_class_by_name(class_name='collections.OrderedDict', x=1)
    assert type(opt).__name__ == 'OrderedDict' and opt['x'] == 1

def test_parse_int_list():
    assert util.parse_int_list('1,2,5-7') == [1, 2, 5, 6, 7]
    assert util.parse_int_list([3]) == [3]
    with pytest.raises(ValueError, match='"a-"'):
        util.parse_int_list('1,a-')

def test_logger_tees_into_file(tmp_path, capsys):
    with util.Logger(str(tmp_path / 'log.txt'), file_mode='a') as logger:
        print('hello')
        logger.write(b'bytes\n')
        logger.write('')
    print('after')
    assert (tmp_path / 'log.txt').read_text() == 'hello\nbytes\n'
    assert capsys.readouterr().out == 'hello\nbytes\nafter\n'

def test_error_summary_is_one_line_with_the_type():
    assert dnnlib.util.error_summary(ValueError('bad thing\n  at line 2\n')) == 'ValueError: bad thing'
    assert dnnlib.util.error_summary(EOFError()) == 'EOFError'
