"""torch_utils: training statistics, the infinite sampler, constants, parameter copies, summaries."""

import itertools

import pytest
import torch

from torch_utils import distributed, misc, training_stats

def test_training_stats_moments_and_keep_previous():
    collector = training_stats.Collector(regex='Test/.*')
    training_stats.report('Test/a', torch.tensor([1.0, 2.0, 3.0, 4.0]))
    training_stats.report('Test/a', [5.0])
    training_stats.report0('Test/b', 7)
    training_stats.report('Other/c', 1.0)
    collector.update()
    assert collector.names() == ['Test/a', 'Test/b']
    assert collector.num('Test/a') == 5 and collector.mean('Test/a') == 3.0
    assert collector.std('Test/a') == pytest.approx(2.0 ** 0.5)
    assert collector.as_dict()['Test/b'] == dict(num=1, mean=7.0, std=0.0)
    training_stats.report('Test/a', [10.0])
    collector.update()
    assert collector['Test/a'] == 10.0
    assert collector.num('Test/b') == 1 # No new data: the previous moments are kept.
    empty = training_stats.Collector(regex='Test/b', keep_previous=False)
    empty.update()
    assert empty.num('Test/b') == 0 and empty.mean('Test/b') != empty.mean('Test/b') # NaN

def test_infinite_sampler_ranks_split_one_global_sequence():
    dataset = list(range(10))
    single = list(itertools.islice(misc.InfiniteSampler(dataset, seed=3), 40))
    rank0 = list(itertools.islice(misc.InfiniteSampler(dataset, rank=0, num_replicas=2, seed=3), 20))
    rank1 = list(itertools.islice(misc.InfiniteSampler(dataset, rank=1, num_replicas=2, seed=3), 20))
    assert single[0::2] == rank0 and single[1::2] == rank1
    assert sorted(set(single)) == dataset
    assert single != list(itertools.islice(misc.InfiniteSampler(dataset, seed=4), 40))

def test_constant_is_cached_and_broadcast():
    a = misc.constant([1, 2], shape=[3, 2], dtype=torch.float32)
    assert a.shape == (3, 2) and a[2].tolist() == [1.0, 2.0]
    assert misc.constant([1, 2], shape=[3, 2], dtype=torch.float32) is a
    assert misc.constant([1, 2], dtype=torch.float64).dtype == torch.float64

def test_copy_params_and_buffers():
    src = torch.nn.BatchNorm1d(3)
    dst = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2)
        src.running_mean.fill_(5)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    assert dst.weight.tolist() == [2.0] * 3 and dst.running_mean.tolist() == [5.0] * 3
    with pytest.raises(AssertionError, match='Missing tensor'):
        misc.copy_params_and_buffers(torch.nn.Module(), dst, require_all=True)

def test_print_module_summary(capsys):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    out = misc.print_module_summary(net, [torch.zeros(5, 4)])
    assert out.shape == (5, 2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '' and lines[-1] == ''
    assert lines[1].split() == ['Sequential', 'Parameters', 'Buffers', 'Output', 'shape', 'Datatype']
    assert lines[-2].split() == ['Total', '58', '0', '-', '-']
    assert any(line.split()[:2] == ['0', '40'] and '[5, 8]' in line for line in lines)

def test_single_process_distributed_init():
    distributed.init()
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1
    assert distributed.get_device().type == ('cuda' if torch.cuda.is_available() else 'cpu')
    distributed.barrier()
    x = torch.ones(2)
    torch.distributed.all_reduce(x)
    assert x.tolist() == [1.0, 1.0]

@pytest.mark.parametrize('device, nccl_built, backend', [
    ('cuda', True, 'nccl'), ('cuda', False, 'gloo'), ('cpu', True, 'gloo'), ('cpu', False, 'gloo'), ('mps', False, 'gloo'),
])
def test_backend_is_gloo_unless_cuda_with_nccl(monkeypatch, device, nccl_built, backend):
    monkeypatch.setattr(torch.distributed, 'is_nccl_available', lambda: nccl_built)
    assert distributed.backend_for(torch.device(device)) == backend
