"""Small utilities shared by every part of the project.

The module keeps the name `dnnlib.util`, and `EasyDict` and `make_cache_dir_path` their names,
because pickles (and the source code embedded in official EDM pickles) refer to them.
"""

import contextlib
import errno
import functools
import glob
import hashlib
import importlib
import os
import re
import sys
import tempfile
import time
import urllib.parse
import uuid

import requests
import tqdm

#----------------------------------------------------------------------------
# Attribute-style dictionary.

class EasyDict(dict):
    """A dict whose keys can also be read, set and deleted as attributes (`d.lr` is `d['lr']`)."""

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __getattr__(self, name):
        if name not in self:
            raise AttributeError(name)
        return self[name]

#----------------------------------------------------------------------------
# Console output copied into a log file.

class Logger:
    """Stands in for sys.stdout and sys.stderr from its creation until close(): whatever either
    receives is written to the original stdout and, if `file_name` is given, to that file (opened
    with `file_mode`), both flushed after every write when `should_flush`. Also a context manager."""

    def __init__(self, file_name=None, file_mode='w', should_flush=True):
        self.should_flush = should_flush
        self.file = None if file_name is None else open(file_name, file_mode)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self

    def _targets(self):
        return [stream for stream in (self.file, self.stdout) if stream is not None]

    def write(self, text):
        if isinstance(text, bytes):
            text = text.decode()
        if not text:
            return
        for stream in self._targets():
            stream.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        for stream in self._targets():
            stream.flush()

    def isatty(self):
        return False

    def close(self):
        """Flush, give sys.stdout/sys.stderr back (unless someone else replaced them since) and
        close the log file."""
        self.flush()
        for stream in ('stdout', 'stderr'):
            if getattr(sys, stream) is self:
                setattr(sys, stream, getattr(self, stream))
        log_file, self.file = self.file, None
        if log_file is not None:
            log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc_info):
        self.close()

#----------------------------------------------------------------------------
# Cache folder for downloads.

_cache_root = None # Set by set_cache_dir(); takes precedence over the environment.

def set_cache_dir(path):
    global _cache_root
    _cache_root = path

def make_cache_dir_path(*paths):
    """`paths` joined onto the cache root: the folder given to set_cache_dir(), else
    $DNNLIB_CACHE_DIR, else .cache/dnnlib in the home folder ($HOME, then %USERPROFILE%), else
    .cache/dnnlib in the system's temporary folder."""
    root = _cache_root
    if root is None:
        root = os.environ.get('DNNLIB_CACHE_DIR')
    if root is None:
        home = os.environ.get('HOME', os.environ.get('USERPROFILE', tempfile.gettempdir()))
        root = os.path.join(home, '.cache', 'dnnlib')
    return os.path.join(root, *paths)

#----------------------------------------------------------------------------
# Durations for humans: '42s', '3m 05s', '2h 03m 05s', '1d 02h 03m'.

def _duration_fields(seconds):
    """[(amount, unit), ...] of a rounded duration, from its largest non-zero unit down to seconds."""
    total = int(round(seconds))
    if total < 60:
        return [(total, 's')]
    fields = [(total // 86400, 'd'), (total // 3600 % 24, 'h'), (total // 60 % 60, 'm'), (total % 60, 's')]
    while fields[0][0] == 0:
        fields.pop(0)
    return fields

def _join_fields(fields):
    (amount, unit), *rest = fields
    return ' '.join([f'{amount}{unit}'] + [f'{amount:02}{unit}' for amount, unit in rest])

def format_time(seconds):
    """The duration in its three largest units (or fewer, down to seconds)."""
    return _join_fields(_duration_fields(seconds)[:3])

def format_time_brief(seconds):
    """The duration in its two largest units."""
    return _join_fields(_duration_fields(seconds)[:2])

#----------------------------------------------------------------------------
# Objects by dotted name, e.g. 'training.networks.EDMPrecond' or 'torch.optim.Adam'.

def _import_or_none(module_name):
    """The module, or None if `module_name` (or a package above it) does not exist. Import errors
    raised from inside an existing module propagate."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        missing = err.name or ''
        if module_name == missing or module_name.startswith(missing + '.'):
            return None
        raise

def get_obj_from_module(module, obj_name):
    """Follow the attribute path `obj_name` ('' = the module itself) from `module`."""
    if not obj_name:
        return module
    return functools.reduce(getattr, obj_name.split('.'), module)

def _has_attr_path(module, attr_path):
    try:
        get_obj_from_module(module, attr_path)
    except AttributeError:
        return False
    return True

def get_module_from_obj_name(obj_name):
    """(module, attribute path) of a dotted name: the longest importable prefix that has the rest as
    attributes. The prefixes 'np.' and 'tf.' stand for numpy and tensorflow."""
    for short, full in [('np.', 'numpy.'), ('tf.', 'tensorflow.')]:
        if obj_name.startswith(short):
            obj_name = full + obj_name[len(short):]
    parts = obj_name.split('.')
    for cut in range(len(parts), 0, -1):
        module = _import_or_none('.'.join(parts[:cut]))
        attr_path = '.'.join(parts[cut:])
        if module is not None and _has_attr_path(module, attr_path):
            return module, attr_path
    raise ImportError(f'Cannot resolve "{obj_name}": no importable module defines it')

def get_obj_by_name(name):
    """The object a dotted name refers to."""
    return get_obj_from_module(*get_module_from_obj_name(name))

def call_func_by_name(*args, func_name=None, **kwargs):
    """Call the function (or class) named `func_name` with the remaining arguments."""
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'{func_name} is not callable')
    return func(*args, **kwargs)

def construct_class_by_name(*args, class_name=None, **kwargs):
    """An instance of the class named `class_name`, built from the remaining arguments."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)

#----------------------------------------------------------------------------
# Files by path or URL; downloads are cached as '<md5 of the URL>_<file name>'.

def is_url(obj, allow_file_urls=False):
    """True for a string like 'scheme://host.domain/...' (and 'file://...' if allowed)."""
    if not (isinstance(obj, str) and '://' in obj):
        return False
    if obj.startswith('file://') and allow_file_urls:
        return True
    try:
        parsed = [urllib.parse.urlparse(obj), urllib.parse.urlparse(urllib.parse.urljoin(obj, '/'))]
    except ValueError:
        return False
    return all(p.scheme and '.' in p.netloc for p in parsed)

def _url_digest(url):
    return hashlib.md5(url.encode('utf-8')).hexdigest()

def _local_file(url):
    """The file a plain path or file:// URL names (a '/' before a Windows drive letter dropped);
    None for other URLs."""
    if not re.match('^[a-z]+://', url):
        return url
    if not url.startswith('file://'):
        return None
    path = urllib.parse.urlparse(url).path
    return path[1:] if re.match(r'^/[a-zA-Z]:', path) else path

def _cached_file(url, cache_dir):
    matches = glob.glob(os.path.join(glob.escape(cache_dir), _url_digest(url) + '_*'))
    return matches[0] if len(matches) == 1 else None

def _remove_abandoned_downloads(url, cache_dir, idle_seconds=600):
    """Delete partial downloads of `url` that a killed process left behind; a file written to in
    the last `idle_seconds` may belong to a download still running elsewhere and is kept."""
    pattern = os.path.join(glob.escape(cache_dir), f'.{_url_digest(url)}_*.tmp-*')
    for temp_path in glob.glob(pattern):
        with contextlib.suppress(OSError):
            if time.time() - os.path.getmtime(temp_path) > idle_seconds:
                os.remove(temp_path)

class _CutOff(Exception):
    """The body of a response ended before the size the server announced."""

def _announced_size(response):
    """Content-Length of an uncompressed response, else None (then the size cannot be checked)."""
    length = response.headers.get('Content-Length', '')
    encoding = response.headers.get('Content-Encoding', 'identity')
    return int(length) if length.isdigit() and encoding == 'identity' else None

def _copy_body(response, f, verbose):
    """Stream the response body into the open file `f`, with a progress bar when `verbose`.
    Raises _CutOff when the connection breaks or fewer bytes arrive than announced."""
    expected = _announced_size(response)
    received = 0
    label = os.path.basename(urllib.parse.urlparse(response.url).path)
    with tqdm.tqdm(total=expected, desc=label, unit='B', unit_scale=True, unit_divisor=1024,
            mininterval=1, disable=not verbose) as bar:
        try:
            for chunk in response.iter_content(chunk_size=1 << 20):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except requests.RequestException:
            announced = '' if expected is None else f' of the {expected} announced'
            raise _CutOff(f'connection lost after {received}{announced} bytes') from None
    if expected is not None and received != expected:
        raise _CutOff(f'cut off: {received} of the {expected} announced bytes arrived')
    if received == 0:
        raise _CutOff('empty response')

def _save_in_cache(response, url, cache_dir, verbose):
    """Stream the response into the cache as '<md5 of the URL>_<file name>', where the name comes
    from the server's Content-Disposition, else from the URL. Written atomically: an interrupted
    download never leaves a file that a later call would take for complete."""
    disposition = re.search(r'filename="([^"]*)"', response.headers.get('Content-Disposition', ''))
    name = re.sub(r'[^0-9a-zA-Z._-]', '_', disposition.group(1) if disposition else url)[:128]
    path = os.path.join(cache_dir, f'{_url_digest(url)}_{name}')
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_write(path) as temp_path, open(temp_path, 'wb') as f:
            _copy_body(response, f, verbose)
    except OSError as err:
        raise IOError(f'Cannot download {url}: cannot write to the cache folder {cache_dir} '
            f'({err.strerror or err}); point DNNLIB_CACHE_DIR to a writable folder') from None
    return path

def _save_in_temp_file(response, verbose):
    """Stream the response into an anonymous temporary file, returned open at its start."""
    f = tempfile.TemporaryFile()
    try:
        _copy_body(response, f, verbose)
    except BaseException:
        f.close()
        raise
    f.seek(0)
    return f

def _is_client_error(err):
    """An HTTP 4xx answer (not found, forbidden, ...) other than timeouts and rate limits:
    asking again gives the same answer."""
    status = err.response.status_code if isinstance(err, requests.HTTPError) else None
    return status is not None and 400 <= status < 500 and status not in (408, 429)

def _failure_reason(err):
    """One short line: the HTTP status, the operating system's reason, or the error itself."""
    if isinstance(err, requests.HTTPError):
        return f'HTTP {err.response.status_code} {err.response.reason}'
    os_reason = re.search(r'\[Errno -?\d+\] [^\'"()]+', str(err))
    if os_reason:
        return os_reason.group(0).strip()
    return str(err) if isinstance(err, _CutOff) else error_summary(err)

def _download(url, save, num_attempts, verbose):
    """GET `url` and hand the streamed response to `save(response)`, whose result is returned.
    Network failures and incomplete bodies are tried again, up to `num_attempts` times in all;
    HTTP client errors are not. Failure raises IOError with one line naming the URL."""
    if verbose:
        print(f'Downloading {url}', flush=True)
    for attempt in range(1, num_attempts + 1):
        try:
            # Ask for the body as stored, so that Content-Length counts the bytes written to disk.
            with requests.get(url, stream=True, timeout=60, headers={'Accept-Encoding': 'identity'}) as response:
                response.raise_for_status()
                return save(response)
        except (requests.RequestException, _CutOff) as err:
            failure = err
            if _is_client_error(err):
                break
            if verbose and attempt < num_attempts:
                print(f'Attempt {attempt} of {num_attempts} failed ({_failure_reason(err)}); trying again', flush=True)
    raise IOError(f'Cannot download {url}: {_failure_reason(failure)}')

def open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
    """A binary file object for a local path, a file:// URL or an http(s):// URL. A URL is
    downloaded once into `cache_dir` (default: the 'downloads' cache folder) and the returned file
    is the cached copy; with `cache=False` it is an anonymous temporary file instead. With
    `return_filename`, the local file name is returned instead of an open file (needs `cache`).
    A failed download raises IOError with one line naming the URL and leaves nothing in the cache."""
    assert num_attempts >= 1 and (cache or not return_filename)
    path = _local_file(url)
    if path is None:
        if not is_url(url):
            raise IOError(f'Not a valid URL: {url}')
        if cache_dir is None:
            cache_dir = make_cache_dir_path('downloads')
        if not cache:
            return _download(url, functools.partial(_save_in_temp_file, verbose=verbose), num_attempts, verbose)
        path = _cached_file(url, cache_dir)
        if path is None:
            _remove_abandoned_downloads(url, cache_dir)
            save = functools.partial(_save_in_cache, url=url, cache_dir=cache_dir, verbose=verbose)
            path = _download(url, save, num_attempts, verbose)
    return path if return_filename else open(path, 'rb')

#----------------------------------------------------------------------------
# Errors and output files.

def error_summary(err):
    """'ExceptionType: first line of its message', for error messages that must stay on one line."""
    lines = str(err).strip().splitlines()
    return f'{type(err).__name__}: {lines[0]}' if lines else type(err).__name__

@contextlib.contextmanager
def atomic_write(path, fsync=False):
    """Yield a temporary path beside `path` for the caller to write; when the body succeeds the
    file is (optionally) flushed to disk and renamed onto `path`, otherwise it is deleted.
    Readers therefore see either the old file or the complete new one, never a partial one."""
    folder, name = os.path.split(os.path.abspath(path))
    temp_path = os.path.join(folder, f'.{name}.tmp-{uuid.uuid4().hex[:8]}')
    try:
        yield temp_path
        if fsync:
            with open(temp_path, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)

def check_can_create_folder(path):
    """Raise OSError unless `path` is a folder that can be written, or one that can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, f'"{path}" exists and is not a directory')
    check_can_create(os.path.join(path, 'any-file'))

def check_can_create(path):
    """Raise OSError (with a readable strerror) unless `path` can be created: its nearest existing
    ancestor must be a folder in which files can be made. Tried with an anonymous temporary file,
    so nothing is left behind; missing folders on the way are not created."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(errno.ENOTDIR, f'Not a directory: "{ancestor}" is a file')
    with tempfile.TemporaryFile(dir=ancestor):
        pass

#----------------------------------------------------------------------------
# Command-line integer lists: '1,2,5-10' -> [1, 2, 5, 6, 7, 8, 9, 10].

def _int_list_piece(piece):
    """The integers of one comma-separated piece: 'a-b' (inclusive range) or a single integer."""
    bounds = re.fullmatch(r'(\d+)-(\d+)', piece)
    if bounds:
        first, last = (int(b) for b in bounds.groups())
        return range(first, last + 1)
    try:
        return [int(piece)]
    except ValueError:
        raise ValueError(f'"{piece}" is not an integer or a range like 5-10') from None

def parse_int_list(s):
    """Expand a comma-separated list of integers and inclusive ranges; a list (click's default) is
    returned unchanged. Raises ValueError naming the offending piece."""
    if isinstance(s, list):
        return s
    return [value for piece in s.split(',') for value in _int_list_piece(piece)]
