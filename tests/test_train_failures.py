"""train.py never hangs after an error. A dataset that fails inside the data-loading worker, or a
run directory deleted in the middle of training, ends train.py and its workers within seconds of
the error, with one `Error:` line and a non-zero exit status."""

import io
import os
import shutil
import subprocess
import sys
import time
import zipfile

import PIL.Image
import psutil
import pytest

from train_helpers import REPO, make_image_folder, single_thread_env

TINY8 = ['--cbase=8', '--cres=1', '--batch=32', '--tick=1', '--seed=1']
EXIT_AFTER_ERROR_SEC = 30

@pytest.fixture(scope='module')
def data8(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp('data') / 'tiny8'), num_images=16, resolution=8)

def _mixed_size_zip(path):
    """Eight PNGs of 8x8 pixels, except the third, which is 16x16."""
    with zipfile.ZipFile(path, 'w') as archive:
        for i in range(8):
            side = 16 if i == 2 else 8
            png = io.BytesIO()
            PIL.Image.new('RGB', (side, side), (30 * i, 100, 50)).save(png, format='PNG')
            archive.writestr(f'00000/img{i:08d}.png', png.getvalue())
    return path

class TrainProcess:
    """train.py in a subprocess, its stdout and stderr in files."""

    def __init__(self, args, tmp_path):
        self.stdout_path, self.stderr_path = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
        with open(self.stdout_path, 'w') as out, open(self.stderr_path, 'w') as err:
            self.proc = subprocess.Popen([sys.executable, 'train.py'] + args, cwd=REPO, stdout=out, stderr=err, env=single_thread_env())

    def stderr(self):
        return self.stderr_path.read_text()

    def wait_until(self, predicate, timeout=300):
        deadline = time.time() + timeout
        while not predicate():
            assert time.time() < deadline, f'timed out; stderr:\n{self.stderr()}'
            time.sleep(0.1)

    def wait_for_error_then_exit(self):
        """Wait for the Error: line; then the process must end within EXIT_AFTER_ERROR_SEC."""
        try:
            self.wait_until(lambda: 'Error:' in self.stderr() or self.proc.poll() is not None)
            error_time = time.time()
            returncode = self.proc.wait(timeout=EXIT_AFTER_ERROR_SEC)
            assert time.time() - error_time < EXIT_AFTER_ERROR_SEC
            return returncode
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def workers(self):
        """The data-loading workers (spawned processes; not the resource tracker)."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [child for child in children if 'spawn_main' in ' '.join(child.cmdline())]

def _assert_one_error_line(stderr, *words):
    errors = [line for line in stderr.splitlines() if line.startswith('Error:')]
    assert len(errors) == 1 and 'Traceback' not in stderr, stderr
    for word in words:
        assert word in errors[0], errors[0]

def test_mixed_image_sizes_end_the_run_with_one_line(tmp_path):
    """The mismatch is found by the data-loading worker at the first batch (checking every image
    at start-up would cost minutes on large datasets); train.py ends at once and, since the run
    saved nothing yet, removes the run directory and the --outdir it created. --seed=0 makes the
    first batch (images 6, 2, 1, 7) hold the odd image: with a first batch without it, tick 0 would
    save a snapshot before the error, and the run would rightly be kept."""
    data = _mixed_size_zip(tmp_path / 'mixed.zip')
    outdir = tmp_path / 'runs' / 'nested'
    run = TrainProcess([f'--outdir={outdir}', f'--data={data}', '--cbase=8', '--cres=1', '--batch=4', '--duration=0.001',
        '--seed=0'], tmp_path)
    assert run.wait_for_error_then_exit() == 1
    _assert_one_error_line(run.stderr(), '--data: ', 'mixed.zip', 'img00000002.png', 'same shape')
    assert sorted(os.listdir(tmp_path)) == ['mixed.zip', 'stderr.txt', 'stdout.txt']

def test_run_dir_deleted_mid_run_ends_the_run_with_one_line(data8, tmp_path):
    """Deleting the run directory makes the next snapshot fail to write (as an unwritable one
    would; chmod cannot make a folder unwritable for root)."""
    outdir = tmp_path / 'runs'
    run = TrainProcess([f'--outdir={outdir}', f'--data={data8}', '--duration=1', '--snap=1'] + TINY8, tmp_path)
    try:
        run.wait_until(lambda: any(outdir.glob('*/stats.jsonl')) or run.proc.poll() is not None)
        assert run.proc.poll() is None, run.stderr()
        workers = run.workers()
        assert workers # the data-loading worker, which ignores SIGTERM
        shutil.rmtree(outdir)
    finally:
        returncode = run.wait_for_error_then_exit()
    assert returncode == 1
    _assert_one_error_line(run.stderr(), 'training stopped: ', 'No such file or directory', '.network-snapshot-000001.pkl')
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    assert not outdir.exists()
