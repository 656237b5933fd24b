"""The sampling options of the command lines that sample from a network (generate.py, fid.py gen),
defined once, and their translation into keyword arguments of training.generation.generate_images.

Interface:

    sampler_options          decorator for a click command. Adds, in this order in --help: --class,
                             --batch, --steps, --sigma_min, --sigma_max, --rho, --S_churn, --S_min,
                             --S_max, --S_noise, --solver, --disc, --schedule, --scaling, --guidance,
                             --gnet, --fast, --bf16, --channels-last, --tf32, --compile, --fused. The
                             command receives them as keyword arguments, named as in FLAGS (e.g.
                             class_idx, max_batch_size, num_steps, discretization, gnet, compile_unet).
    check_sampler_options(sampling)
                             the checks that need no network, given the dict of those arguments;
                             raises click.ClickException. Call it before dist.init() and any loading.
    generate_kwargs(net, sampling, device)
                             checks `sampling` against the loaded main network, loads and checks --gnet,
                             resolves the fast path on `device` and prints (rank 0) what it loads and
                             the fast path in use; raises click.ClickException. Returns the keyword
                             arguments of generate_images(net, seeds, device=device, **kwargs): class_idx,
                             max_batch_size, fast, guidance, gnet (a network or None) and the sampler
                             options (None where not given).
    parse_seeds              click callback for a --seeds option (e.g. 1,2,5-10).

Use:

    @click.command()
    @click.option('--network', 'network_pkl', ...)   # the tool's own options first,
    @sampling_cli.sampler_options                     # then these, so that they follow in --help
    def main(network_pkl, **sampling):
        sampling_cli.check_sampler_options(sampling)
        dist.init()
        net = load_network(network_pkl)
        kwargs = sampling_cli.generate_kwargs(net, sampling, dist.get_device())
        for batch in generate_images(net, seeds, device=dist.get_device(), **kwargs):
            ...
"""

import re

import click

import dnnlib
from torch_utils import distributed as dist
from training import fast_path, generation
from training.snapshot import SnapshotError

# (flag, parameter name, click settings) of every option, in the order of --help.
OPTIONS = [
    ('--class', 'class_idx', dict(type=click.IntRange(min=0), metavar='INT', help='Use this class label for all images  [default: random]')),
    ('--batch', 'max_batch_size', dict(type=click.IntRange(min=1), default=64, show_default=True, metavar='INT', help='Largest batch per process')),

    # The time steps and churn of Algorithm 2; unset ones take the sampler's defaults.
    ('--steps', 'num_steps', dict(type=click.IntRange(min=1), default=18, show_default=True, metavar='INT', help='Sampling steps N')),
    ('--sigma_min', 'sigma_min', dict(type=click.FloatRange(min=0, min_open=True), metavar='FLOAT', help='Smallest noise level  [default: varies]')),
    ('--sigma_max', 'sigma_max', dict(type=click.FloatRange(min=0, min_open=True), metavar='FLOAT', help='Largest noise level  [default: varies]')),
    ('--rho', 'rho', dict(type=click.FloatRange(min=0, min_open=True), default=7, show_default=True, metavar='FLOAT', help='Exponent of the time-step spacing')),
    ('--S_churn', 'S_churn', dict(type=click.FloatRange(min=0), default=0, show_default=True, metavar='FLOAT', help='Amount of stochasticity (churn)')),
    ('--S_min', 'S_min', dict(type=click.FloatRange(min=0), default=0, show_default=True, metavar='FLOAT', help='Churn only at noise levels from here')),
    ('--S_max', 'S_max', dict(type=click.FloatRange(min=0), default='inf', show_default=True, metavar='FLOAT', help='Churn only at noise levels up to here')),
    ('--S_noise', 'S_noise', dict(type=float, default=1, show_default=True, metavar='FLOAT', help='Scale factor of the churn noise')),

    # Solvers: the ablations of Table 1 (any of these four selects the generalised sampler) and the
    # one-evaluation-per-step solvers on the EDM time steps.
    ('--solver', 'solver', dict(type=click.Choice(['euler', 'heun', 'dpmpp2m', 'euler_a']), metavar='SOLVER',
        help='ODE solver: euler|heun (ablation), dpmpp2m (DPM-Solver++(2M)) or euler_a (ancestral Euler)')),
    ('--disc', 'discretization', dict(type=click.Choice(['vp', 've', 'iddpm', 'edm']), metavar='vp|ve|iddpm|edm', help='Ablation: noise-level discretisation')),
    ('--schedule', 'schedule', dict(type=click.Choice(['vp', 've', 'linear']), metavar='vp|ve|linear', help='Ablation: noise schedule sigma(t)')),
    ('--scaling', 'scaling', dict(type=click.Choice(['vp', 'none']), metavar='vp|none', help='Ablation: signal scaling s(t)')),

    # Guidance: D_guide + W (D_main - D_guide).
    ('--guidance', 'guidance', dict(type=click.FloatRange(min=0), default=1, show_default=True, metavar='FLOAT',
        help='Guidance weight W; 1 samples without guidance')),
    ('--gnet', 'gnet', dict(type=str, metavar='PATH|URL',
        help='Guide network for autoguidance  [default: none, i.e. classifier-free guidance]')),

    # Speed: the fast path (bit-identical images only without these options).
    ('--fast', 'fast', dict(is_flag=True, help='Turn on the knobs below that measured fastest on this device')),
    ('--bf16', 'bf16', dict(metavar='BOOL', type=bool, help='Run the U-Net under bfloat16 autocast  [default: off]')),
    ('--channels-last', 'channels_last', dict(metavar='BOOL', type=bool, help='Channels-last memory format for the U-Net  [default: off]')),
    ('--tf32', 'tf32', dict(metavar='BOOL', type=bool, help='TensorFloat-32 matmuls and convolutions on CUDA  [default: off]')),
    ('--compile', 'compile_unet', dict(metavar='BOOL', type=bool, help='torch.compile the U-Net; CUDA graphs on CUDA (costs compile time)  [default: off]')),
    ('--fused', 'fused', dict(metavar='BOOL', type=bool, help='Fused attention kernel  [default: off]')),
]

FLAGS = {name: flag for flag, name, _ in OPTIONS}

# The options that generate_images passes on to the sampler.
SAMPLER_KWARGS = ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise',
                  'solver', 'discretization', 'schedule', 'scaling')

def sampler_options(command):
    """Add the sampling options to a click command, after those declared above this decorator."""
    for flag, name, settings in reversed(OPTIONS):
        command = click.option(flag, name, **settings)(command)
    return command

def parse_seeds(_ctx, _param, text):
    """--seeds: comma-separated non-negative integers and ascending ranges such as 5-10."""
    if not text.strip():
        raise click.BadParameter('no seeds given; expected e.g. 0-63 or 1,2,5-10')
    try:
        seeds = dnnlib.util.parse_int_list(text)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    for piece in text.split(','):
        bounds = re.fullmatch(r'(\d+)-(\d+)', piece)
        if bounds and int(bounds[1]) > int(bounds[2]):
            raise click.BadParameter(f'the range "{piece}" is empty; write the smaller seed first, e.g. {bounds[2]}-{bounds[1]}')
    if min(seeds) < 0:
        raise click.BadParameter(f'seed {min(seeds)} is negative; seeds are integers from 0 up')
    return seeds

#----------------------------------------------------------------------------

def check_sampler_options(sampling):
    """The checks that need no network: enough steps, an ascending explicit noise range, and a solver
    that can honour the other options."""
    # With a single step the time-step formula would divide 0 by 0 and give NaN images.
    if sampling['num_steps'] < 2:
        raise click.ClickException(f'--steps={sampling["num_steps"]}: at least 2 sampling steps are needed')
    low, high = sampling['sigma_min'], sampling['sigma_max']
    if low is not None and high is not None and not low < high:
        raise click.ClickException(f'--sigma_min={low:g} must be smaller than --sigma_max={high:g}')
    foreign = generation.options_foreign_to_solver(sampling)
    if foreign:
        given = ' '.join(f'{FLAGS[name]}={sampling[name]:g}' if isinstance(sampling[name], float) else
                         f'{FLAGS[name]}={sampling[name]}' for name in foreign)
        raise click.ClickException(f'--solver={sampling["solver"]} runs on the EDM time steps without churn; it cannot take {given}')

def reject(prefix, check, *args):
    """Run check(*args); turn its ValueError into a one-line click error that starts with `prefix`."""
    try:
        check(*args)
    except ValueError as err:
        raise click.ClickException(f'{prefix}{err}') from None

def load_guide(gnet_pkl):
    """The guide network of --gnet, loaded like --network; errors name --gnet."""
    dist.print0(f'Loading guide network from "{gnet_pkl}"...')
    try:
        gnet = generation.load_network(gnet_pkl)
    except (SnapshotError, OSError) as err:
        raise click.ClickException(f'--gnet: {err}') from None
    reject('--gnet: ', generation.check_denoiser, gnet)
    return gnet

def generate_kwargs(net, sampling, device):
    """Check the options against the main network `net`, load the guide network and resolve the fast
    path; return the keyword arguments of generate_images (see the module docstring)."""
    check_sampler_options(sampling)
    reject('', generation.check_denoiser, net)
    reject(f'--class={sampling["class_idx"]}: ', generation.check_class_idx, net, sampling['class_idx'])
    sampler_kwargs = {name: sampling[name] for name in SAMPLER_KWARGS}
    reject('--sigma_min/--sigma_max: ', generation.check_noise_range, net, sampler_kwargs)

    gnet = None if sampling['gnet'] is None else load_guide(sampling['gnet'])
    which = f'--gnet={sampling["gnet"]}' if gnet is not None else f'--guidance={sampling["guidance"]:g}'
    reject(f'{which}: ', generation.check_guidance, net, sampling['guidance'], gnet)

    speed = fast_path.resolve(device, fast=sampling['fast'], bf16=sampling['bf16'], channels_last=sampling['channels_last'],
                              tf32=sampling['tf32'], compile=sampling['compile_unet'], fused=sampling['fused'])
    if speed.enabled:
        dist.print0('Fast path: ' + ', '.join(knob for knob, on in speed.as_dict().items() if on))
    return dict(class_idx=sampling['class_idx'], max_batch_size=sampling['max_batch_size'], fast=speed,
                guidance=sampling['guidance'], gnet=gnet, **sampler_kwargs)
