"""Stopping a training run cleanly on SIGTERM (cluster pre-emption) or SIGINT (Ctrl+C), and
never hanging at exit after an error.

The signal handler only takes note. The training loop asks after every step whether any rank
took note of a signal (a max-reduction of the signal numbers), so that all ranks leave after the
same step, save a snapshot and a training state first, and agree on the signal that stopped them.
A second SIGINT raises KeyboardInterrupt for a hard stop; further SIGTERMs are ignored.

DataLoader workers ignore both signals (they reach every process of a job), so that the main
process can finish its step; after an error the main process therefore has to end them itself
(`end_worker_processes`), or the interpreter would wait for them forever at exit.
"""

import multiprocessing
import signal
import threading

import torch

from torch_utils import distributed as dist

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

def exit_status(signum):
    """The exit status of a run that a signal stopped early: 128 + the signal number, as a shell
    reports a process ended by that signal (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(signum)

class StopSignal:
    """Context manager that installs the handlers (main thread only) and restores the previous
    ones on exit. Must be created on every rank at the same point: it may create a process group."""

    def __init__(self):
        self.signum = None  # The first signal this process received.
        self.agreed = None  # The signal that stops all ranks, once requested() has said so.
        self._previous = {}
        # With NCCL the flag travels through a CPU (gloo) group, so that asking costs no GPU sync.
        self._group = None
        if dist.get_world_size() > 1 and torch.distributed.get_backend() != 'gloo':
            self._group = torch.distributed.new_group(backend='gloo')

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._take_note) for signum in HANDLED_SIGNALS}
        return self

    def __exit__(self, *exc_info):
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler)

    def _take_note(self, signum, _frame):
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def _own_request(self):
        """This process's signal number; the cluster hook `dist.should_stop()` counts as SIGTERM."""
        if self.signum is not None:
            return int(self.signum)
        return int(signal.SIGTERM) if dist.should_stop() else 0

    def requested(self):
        """Whether any rank received a signal (or was asked to stop by the cluster hook). A
        collective: every rank must call it at the same step. When several ranks were signalled
        differently, the largest signal number wins (SIGTERM over SIGINT) on every rank."""
        wanted = torch.tensor([self._own_request()], dtype=torch.int64)
        if dist.get_world_size() > 1:
            torch.distributed.all_reduce(wanted, op=torch.distributed.ReduceOp.MAX, group=self._group)
        if wanted.item() > 0:
            self.agreed = signal.Signals(wanted.item())
        return self.agreed is not None

    def reason(self):
        """'SIGTERM' or 'SIGINT' when this process was signalled, else 'a stop request' (another rank's)."""
        if self.signum is None:
            return 'a stop request'
        return signal.Signals(self.signum).name

def ignore_in_worker(_worker_id):
    """DataLoader `worker_init_fn`: workers ignore SIGTERM/SIGINT, which also reach them (Ctrl+C
    signals the whole process group, torchrun each worker's group, a cluster every process), so
    that the main process can finish its step and save. They end with the main process: normally
    when it drops its data loader, after an error through `end_worker_processes`."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

def end_worker_processes():
    """Kill (SIGKILL, which they cannot ignore) and reap the child processes that are still alive:
    the DataLoader workers of a training loop left by an exception. At interpreter exit, Python
    would otherwise send them a SIGTERM, which they ignore, and wait for them forever.
    PyTorch's SIGCHLD handler would report every kill as a worker failure, so SIGCHLD is held
    back until the children are reaped; by then there is nothing left to report."""
    children = multiprocessing.active_children()
    if not children:
        return
    blockable = hasattr(signal, 'pthread_sigmask') and hasattr(signal, 'SIGCHLD')
    if blockable:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        for child in children:
            child.kill()
        for child in children:
            child.join()
    finally:
        if blockable:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
