"""Small utilities shared by every part of the project (training.md section 8).

Names follow the original `dnnlib.util`, because pickles and the source code embedded in
official EDM pickles refer to some of them (`EasyDict`, `make_cache_dir_path`).
"""

import glob
import hashlib
import importlib
import io
import os
import re
import sys
import tempfile
import types
import urllib.error
import urllib.parse
import urllib.request
import uuid

#----------------------------------------------------------------------------
# Attribute-style dictionary.

class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]

#----------------------------------------------------------------------------
# Tee of stdout/stderr into a log file.

class Logger:
    """Replaces sys.stdout and sys.stderr; everything written goes to the original stdout and,
    optionally, to `file_name` (opened with `file_mode`)."""

    def __init__(self, file_name=None, file_mode='w', should_flush=True):
        self.file = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()

    def write(self, text):
        if isinstance(text, bytes):
            text = text.decode()
        if len(text) == 0:
            return
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def isatty(self):
        return False

    def close(self):
        self.flush()
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

#----------------------------------------------------------------------------
# Cache directory.

_dnnlib_cache_dir = None

def set_cache_dir(path):
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = path

def make_cache_dir_path(*paths):
    """Cache root by priority: set_cache_dir(), $DNNLIB_CACHE_DIR, $HOME, %USERPROFILE%, tempdir."""
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    if 'HOME' in os.environ:
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    if 'USERPROFILE' in os.environ:
        return os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)

#----------------------------------------------------------------------------
# Human-readable durations.

def format_time(seconds):
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02}m {s % 60:02}s'
    return f'{s // 86400}d {(s // 3600) % 24:02}h {(s // 60) % 60:02}m'

def format_time_brief(seconds):
    """Like format_time, but hours and days show only their two largest units."""
    if int(round(seconds)) < 60 * 60:
        return format_time(seconds)
    return ' '.join(format_time(seconds).split(' ')[:2])

#----------------------------------------------------------------------------
# Objects by dotted name ("training.networks.EDMPrecond").

def get_module_from_obj_name(obj_name):
    """Split `obj_name` into (module, attribute path) using the longest importable module prefix."""
    obj_name = re.sub('^np.', 'numpy.', obj_name)
    obj_name = re.sub('^tf.', 'tensorflow.', obj_name)
    parts = obj_name.split('.')
    for i in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            # Only swallow "this prefix is not a module"; re-raise errors from inside real modules.
            if err.name is None or not module_name.startswith(err.name):
                raise
            continue
        local_name = '.'.join(parts[i:])
        try:
            get_obj_from_module(module, local_name)
        except AttributeError:
            continue
        return module, local_name
    raise ImportError(f'Cannot resolve "{obj_name}": no importable module defines it')

def get_obj_from_module(module, obj_name):
    if obj_name == '':
        return module
    obj = module
    for part in obj_name.split('.'):
        obj = getattr(obj, part)
    return obj

def get_obj_by_name(name):
    module, obj_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, obj_name)

def call_func_by_name(*args, func_name=None, **kwargs):
    assert func_name is not None
    func_obj = get_obj_by_name(func_name)
    assert callable(func_obj)
    return func_obj(*args, **kwargs)

def construct_class_by_name(*args, class_name=None, **kwargs):
    return call_func_by_name(*args, func_name=class_name, **kwargs)

def get_top_level_function_name(obj):
    assert callable(obj) and isinstance(obj, types.FunctionType) and obj.__module__ in sys.modules
    module = obj.__module__
    if module == '__main__':
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return module + '.' + obj.__name__

#----------------------------------------------------------------------------
# URLs, downloads and the on-disk cache.

def is_url(obj, allow_file_urls=False):
    """True for a string like 'scheme://host.domain/...' (and 'file://...' if allowed)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        res = urllib.parse.urlparse(obj)
        if not res.scheme or not res.netloc or '.' not in res.netloc:
            return False
        res = urllib.parse.urlparse(urllib.parse.urljoin(obj, '/'))
        if not res.scheme or not res.netloc or '.' not in res.netloc:
            return False
    except ValueError:
        return False
    return True

def url_cache_path(url, cache_dir=None):
    """The cached copy of `url`, or None. Cache files are named '<md5 of url>_<safe file name>'."""
    cache_dir = cache_dir if cache_dir is not None else make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    matches = glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*'))
    return matches[0] if len(matches) == 1 else None

def _download(url, num_attempts, verbose):
    """Fetch `url`; returns (data, file name from Content-Disposition or the URL)."""
    last_error = None
    if verbose:
        print(f'Downloading {url} ...', end='', flush=True)
    for _attempt in range(num_attempts):
        try:
            with urllib.request.urlopen(url, timeout=60) as res:
                data = res.read()
                disposition = res.headers.get('Content-Disposition', '') or ''
            if len(data) == 0:
                raise IOError('empty response')
            match = re.search(r'filename="([^"]*)"', disposition)
            if verbose:
                print(' done')
            return data, (match.group(1) if match else url)
        except (urllib.error.URLError, OSError, ValueError) as err:
            last_error = err
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500:
                break # Retrying does not help for "not found", "forbidden", ...
            if verbose:
                print('.', end='', flush=True)
    if verbose:
        print(' failed')
    if isinstance(last_error, urllib.error.HTTPError):
        reason = f'HTTP {last_error.code} {last_error.reason}'
    else:
        reason = getattr(last_error, 'reason', None) or last_error
    raise IOError(f'Cannot download {url}: {reason}')

def open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
    """Open a local path, a file:// URL or an http(s):// URL (downloaded once into the cache).

    Returns a binary file object, or the local file name if `return_filename`. A failed download
    raises IOError with one line naming the URL.
    """
    assert num_attempts >= 1
    assert not (return_filename and not cache)

    # Local file.
    if not re.match('^[a-z]+://', url):
        return url if return_filename else open(url, 'rb')
    if url.startswith('file://'):
        filename = urllib.parse.urlparse(url).path
        if re.match(r'^/[a-zA-Z]:', filename):
            filename = filename[1:]
        return filename if return_filename else open(filename, 'rb')
    if not is_url(url):
        raise IOError(f'Not a valid URL: {url}')

    # Cached copy.
    cache_dir = cache_dir if cache_dir is not None else make_cache_dir_path('downloads')
    if cache:
        cache_file = url_cache_path(url, cache_dir)
        if cache_file is not None:
            return cache_file if return_filename else open(cache_file, 'rb')

    # Download, then store atomically: a killed process never leaves a truncated cache file.
    data, name = _download(url, num_attempts=num_attempts, verbose=verbose)
    if cache:
        url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
        safe_name = re.sub(r'[^0-9a-zA-Z-._]', '_', name)[:128]
        cache_file = os.path.join(cache_dir, url_md5 + '_' + safe_name)
        temp_file = os.path.join(cache_dir, 'tmp_' + uuid.uuid4().hex + '_' + url_md5 + '_' + safe_name)
        os.makedirs(cache_dir, exist_ok=True)
        with open(temp_file, 'wb') as f:
            f.write(data)
        os.replace(temp_file, cache_file)
        if return_filename:
            return cache_file
    return io.BytesIO(data)

#----------------------------------------------------------------------------
# One-line error messages.

def error_summary(err):
    """'ExceptionType: first line of its message', for error messages that must stay on one line."""
    lines = str(err).strip().splitlines()
    return f'{type(err).__name__}: {lines[0]}' if lines else type(err).__name__

#----------------------------------------------------------------------------
# Atomic output files.

class atomic_write:
    """Context manager yielding a temporary path beside `path`; on success the temporary file
    is renamed to `path`, on error it is removed. Readers never see a partial file."""

    def __init__(self, path):
        self.path = path
        directory, name = os.path.split(os.path.abspath(path))
        self.temp_path = os.path.join(directory, f'.{name}.tmp-{uuid.uuid4().hex[:8]}')

    def __enter__(self):
        return self.temp_path

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            os.replace(self.temp_path, self.path)
        elif os.path.exists(self.temp_path):
            os.remove(self.temp_path)
        return False

#----------------------------------------------------------------------------
# Command-line lists ("1,2,5-10" -> [1, 2, 5, 6, 7, 8, 9, 10]), cli.md "int-list parser".

def parse_int_list(s):
    """Split on ',' and expand inclusive ranges 'a-b'; a list is returned unchanged.
    Raises ValueError naming the offending piece."""
    if isinstance(s, list):
        return s
    values = []
    for piece in s.split(','):
        match = re.fullmatch(r'(\d+)-(\d+)', piece)
        if match:
            values.extend(range(int(match.group(1)), int(match.group(2)) + 1))
        else:
            try:
                values.append(int(piece))
            except ValueError:
                raise ValueError(f'"{piece}" is not an integer or a range like 5-10') from None
    return values
