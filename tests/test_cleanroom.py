"""The clean-room promise of the README, measured: no Python file of the checkout may repeat the
original EDM code beyond the limits of the checker. The checker and the hashes of the original
live outside the repository (../shared/cleanroom, beside the checkout of the development team);
a user's clone has no such folder, so the test is skipped there and says why."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

CHECKER = REPO.parent / 'shared' / 'cleanroom' / 'check.py'

@pytest.mark.skipif(not CHECKER.is_file(), reason=f'clean-room checker not present at {CHECKER}')
def test_no_file_repeats_the_original():
    result = subprocess.run([sys.executable, str(CHECKER), '--root', str(REPO)],
                            capture_output=True, text=True, timeout=300)
    over = [line for line in result.stdout.splitlines() if line.startswith('OVER')]
    assert result.returncode == 0 and result.stdout.rstrip().endswith('clean-room check: pass'), \
        'clean-room check fails:\n' + '\n'.join(over or [result.stdout[-2000:], result.stderr[-2000:]])
