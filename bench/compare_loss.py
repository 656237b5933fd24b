"""Training loss of two runs side by side, from their stats.jsonl: is run B's loss curve within the
noise of run A's? (Used for the faithful path against --fast, see bench/README.md.)

    python bench/compare_loss.py RUN_DIR_A RUN_DIR_B [--after=10] [--plot=loss.png]

A tick's loss is the mean over the images of that tick. Ticks covering less than 1.5 kimg (the first
batch after a start or a resume, a stop in mid-tick) are left out as too noisy, and a resumed run
keeps its later ticks where it repeats a stretch of kimg. Run B's loss is read at A's ticks, linear in
log loss between B's own ticks (runs that were stopped and resumed tick at other kimg). Printed: the
two losses at every tick of A; the mean log ratio B/A over the ticks after --after kimg with its
standard error; and, for scale, how much the loss moves from one tick to the next within each run.
"""

import math
import os
import statistics
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quickstart # pylint: disable=wrong-import-position

def loss_by_kimg(run_dir):
    """{kimg: mean loss} of the ticks of a run (quickstart.loss_history: resumes handled, torn lines skipped)."""
    ticks = quickstart.loss_history(run_dir)
    kimg = [tick['Progress/kimg']['mean'] for tick in ticks]
    return {k: tick['Loss/loss']['mean'] for k, previous, tick in zip(kimg[1:], kimg, ticks[1:])
            if k - previous >= 1.5 and 'Loss/loss' in tick}

def loss_at(curve, kimg):
    """The loss of `curve` at `kimg`, log-linear between its ticks; None outside them."""
    points = sorted(curve.items())
    for (k1, loss1), (k2, loss2) in zip(points, points[1:]):
        if k1 <= kimg <= k2:
            t = (kimg - k1) / (k2 - k1)
            return math.exp((1 - t) * math.log(loss1) + t * math.log(loss2))
    return None

def tick_to_tick_change(curve, after):
    """Mean |log(loss_next / loss)| of consecutive ticks after `after` kimg."""
    losses = [loss for k, loss in sorted(curve.items()) if k >= after]
    return statistics.mean(abs(math.log(b / a)) for a, b in zip(losses, losses[1:]))

def save_plot(curves, path):
    import matplotlib # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, curve in curves.items():
        points = sorted(curve.items())
        ax.plot([k for k, _ in points], [loss for _, loss in points], marker='.', label=label)
    ax.set_yscale('log')
    ax.set_xlabel('training images (kimg)')
    ax.set_ylabel('loss (mean over tick)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

@click.command()
@click.argument('run_a', type=click.Path(exists=True, file_okay=False))
@click.argument('run_b', type=click.Path(exists=True, file_okay=False))
@click.option('--after', type=float, default=10, show_default=True, help='Compare the ticks after this many kimg')
@click.option('--plot', 'plot_path', metavar='PNG', default=None, help='Also plot both curves')
@click.option('--labels', default='A,B', show_default=True, help='Names of the two runs in the plot')
def main(run_a, run_b, after, plot_path, labels):
    a, b = loss_by_kimg(run_a), loss_by_kimg(run_b)
    print(f'{"kimg":>7} {"A":>8} {"B":>8} {"B/A":>7}')
    log_ratios = []
    for kimg, loss in sorted(a.items()):
        other = loss_at(b, kimg)
        if other is None:
            continue
        print(f'{kimg:7.1f} {loss:8.4f} {other:8.4f} {other / loss:7.3f}')
        if kimg >= after:
            log_ratios.append(math.log(other / loss))
    if len(log_ratios) < 2:
        raise click.ClickException(f'fewer than two common ticks after {after:g} kimg')
    mean, error = statistics.mean(log_ratios), statistics.stdev(log_ratios) / math.sqrt(len(log_ratios))
    print(f'{len(log_ratios)} ticks after {after:g} kimg: B/A = {math.exp(mean):.4f} '
          f'(mean log ratio {mean:+.4f}, standard error {error:.4f})')
    print(f'tick-to-tick change within a run: A {tick_to_tick_change(a, after):.4f}, B {tick_to_tick_change(b, after):.4f}')
    if plot_path:
        save_plot(dict(zip(labels.split(','), (a, b))), plot_path)

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
