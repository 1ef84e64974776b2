"Two CPU processes (torchrun, gloo) against one, on the same global batch: the same parameters, metrics and decisions."
import os, subprocess, sys, warnings
from pathlib import Path
import pytest, torch

RUN = Path(__file__).with_name('dist_run.py')

def launch(cmd, env):
    "Run `cmd`; once more if a process aborted in C++ at random."
    for attempt in range(2):
        p = subprocess.run(cmd, env={**env, 'PYTHONFAULTHANDLER': '1'}, capture_output=True, text=True, timeout=600)
        # twice in about twenty full-suite runs (never when run alone) a process aborted with this message, from a C++ thread of gloo
        # or of the rendezvous store; not understood yet: one more try, with a warning that keeps it visible
        if p.returncode == 0 or 'terminate called without an active exception' not in p.stderr: return p
        warnings.warn('a torchrun process aborted (terminate called without an active exception); ran again:\n' + p.stderr[-2000:])
    return p

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    for cmd in ([sys.executable, str(RUN), str(out)],
                [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(RUN), str(out)]):
        p = launch(cmd, env)
        assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f, weights_only=False) for f in ('r0_w1.pt', 'r0_w2.pt', 'r1_w2.pt')]

def close(a, b, tol):
    if isinstance(a, tuple): return all(close(x, y, tol) for x, y in zip(a, b))
    return (a - b).abs().max().item() <= tol

def test_the_processes_agree_exactly(runs):
    _, r0, r1 = runs
    for k in r0:
        if isinstance(r0[k], (torch.Tensor, tuple)): assert close(r0[k], r1[k], 0), k
        else: assert r0[k] == r1[k], k

@pytest.mark.parametrize('k', ['single', 'single_compiled', 'Mean', 'MGDA', 'MGDA-f', 'UPGrad', 'UPGrad-f', 'UPGrad-gram', 'SDMGrad', 'SDMGrad-c', 'Random'])
def test_two_processes_train_as_one_on_the_global_batch(runs, k):
    "Parameters (and the aggregators' weights) equal to the single process's to 1e-5 (SDMGrad on consecutive batches in float64: its inner"
    "iterations amplify the rounding of a sum taken in another order, 1.6e-3 after four steps in float32)."
    one, two, _ = runs
    assert close(one[k], two[k], 1e-5)

@pytest.mark.parametrize('k', ['IWRM', 'IWRM-SDMGrad'])
def test_iwrm_on_two_processes_trains_as_one_on_the_global_batch(runs, k):
    "The exact reduction: every process forms the Gramian of the global batch from the layers' gathered pieces."
    one, two, _ = runs
    assert close(one[k], two[k], 1e-5)

def test_iwrm_local_gramians_are_an_estimate(runs):
    one, two, r1 = runs
    assert close(two['IWRM-local'], r1['IWRM-local'], 0) and not close(two['IWRM-local'], one['IWRM'][0], 1e-3)

def test_global_metrics_decisions_and_checkpoints(runs):
    one, two, _ = runs
    assert close(two['single_compiled'], one['single'], 1e-5)  # CompileCB under DDP trains as the eager single process
    for a, b in zip(one['single_hist'], two['single_hist']):  # the validation set (50 items) is split 25/25 without padding
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-6 for k in a)
    assert two['loaded_equal'] and two['lr_find'] == one['lr_find']
    assert two['nan_stop_iter'] == one['nan_stop_iter'] == 2  # NaN on one process only: both stop at that batch
    assert two['mtl_nan'] == 'GuardCB: task loss(es) 1 on process 1 not finite at training step 3'
    assert two['early_stop_epoch'] == one['early_stop_epoch']

def test_averaged_gramians_are_an_estimate(runs):
    "reduce='gramian' (each process's Gramian, averaged) differs from the exact Jacobian all-reduce, by design; the processes still agree."
    one, two, r1 = runs
    assert close(two['MGDA-g'], r1['MGDA-g'], 0) and not close(two['MGDA-g'], two['MGDA'], 1e-3)

def test_tensor_loader_shards_are_disjoint_the_same_order_and_padded_for_training():
    from mtlearn.datasets import TensorDataLoader
    x = torch.arange(10)
    dl = TensorDataLoader(x, batch_size=2, shuffle=True)
    parts = [dl.shard(r, 3, pad=True, seed=7) for r in range(3)]
    items = [torch.cat([b[0] for b in p]) for p in parts]
    assert [len(p) for p in parts] == [2, 2, 2] and all(len(i) == 4 for i in items)  # 10 items padded to 12
    assert set(torch.cat(items).tolist()) == set(range(10)) and len(torch.cat(items)) == 12
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    padded = torch.cat([perm, perm[:2]])
    assert all(torch.equal(items[r], padded[r::3]) for r in range(3))  # one permutation, items rank::world
    val = [torch.cat([b[0] for b in TensorDataLoader(x, batch_size=2).shard(r, 3, pad=False)]) for r in range(3)]
    assert sorted(torch.cat(val).tolist()) == list(range(10))  # validation: every item once
    with pytest.raises(ValueError, match=r'`rank` should be in \[0, `world`\); found rank = 3, world = 3'): dl.shard(3, 3)

def test_the_command_line_job_under_torchrun(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    p = launch([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'mtlearn.cli', '--tasks', 'multi-fashion',
                '--epochs', '1', '--n_train', '600', '--out', str(tmp_path)], env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('acc_left') == 1 and '2 processes' in p.stdout  # one table, from the first process
    assert (tmp_path / 'task_weights.png').exists()

def test_a_backend_that_cannot_work_is_named(monkeypatch):
    from mtlearn.accel import init_distributed
    if torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match="`backend` 'nccl' needs CUDA GPUs, which this machine lacks; use 'gloo'"): init_distributed('nccl')

def test_reduce_is_checked_when_the_callback_is_made():
    from mtlearn.multitask import MultiTaskGradCB
    from mtlearn.aggregators import SDMGrad, MGDA
    with pytest.raises(ValueError, match="`reduce`='gramian' is for mode='params' with an aggregator whose weights come from the Gramian; found mode = 'params' and a SDMGrad"):
        MultiTaskGradCB(SDMGrad(), reduce='gramian')
    with pytest.raises(ValueError, match="`reduce` should be 'jacobian' \\(exact\\) or 'gramian'"): MultiTaskGradCB(MGDA(), reduce='all')
