"The core's acceptance cases: features that compose on 2 processes, across a save and resume, with one state protocol."
import os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest, torch
import torch.nn.functional as F
from torch import nn
from mtlearn.learner import *
from mtlearn.learner import _plain
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.tracker import CSVLogger, EarlyStoppingCB, GradientAccumulation, SaveModelCB
from mtlearn.aggregators import SDMGrad
from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, tiny_mtl_model, synthetic_tasks
import mtlearn.procs as procs

RUN = Path(__file__).with_name('core_run.py')
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']

def run(cmd, out, mode, timeout=600):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONFAULTHANDLER': '1'}
    return subprocess.run(cmd + [str(RUN), str(out), mode], env=env, capture_output=True, text=True, timeout=timeout)

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('core')
    for cmd in ([sys.executable], TORCHRUN):
        p = run(cmd, out, 'main')
        assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f, weights_only=False) for f in ('main_r0_w1.pt', 'main_r0_w2.pt', 'main_r1_w2.pt')]

def test_one_cycle_anneals_over_the_sharded_epoch(runs):
    "Case 1: `total_steps` came from the unsharded loader: on 2 processes the last lr was 7.5e-3 instead of ~4e-8."
    one, two, _ = runs
    assert two['one_cycle_lr'] == pytest.approx(one['one_cycle_lr'], rel=1e-6)
    assert (one['one_cycle'] - two['one_cycle']).abs().max() <= 1e-5

def test_csv_log_under_torchrun(runs):
    "Case 2: every process wrote and renamed the same temporary file; one of them crashed."
    assert runs[1]['csv_rows'] == 2

def test_resume_mid_epoch_on_two_processes_is_the_uninterrupted_run(runs):
    "Cases 6, 7: the metrics' state saved was rank 0's only, and the random states (dropout) were rank 0's only."
    for res in runs:
        assert torch.equal(res['resumed'], res['whole'])
        for a, b in zip(res['resumed_hist'], res['whole_hist'], strict=True):  # (the same sums, taken in another order)
            assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)
        torch.testing.assert_close(res['mtl_resumed'], res['mtl_whole'], rtol=0, atol=1e-12)  # SDMGrad, consecutive

def test_uneven_shards_are_refused_with_the_counts(tmp_path):
    "Case 10: a different number of batches per process ended in a C++ abort from gloo."
    p = run(TORCHRUN, tmp_path, 'uneven', timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    for r in (0, 1):
        msg = torch.load(tmp_path / f'uneven_r{r}_w2.pt', weights_only=False)['uneven']
        assert 'the number of training batches' in msg and 'process 0: 3, process 1: 4' in msg, msg

def test_a_stalled_process_is_named_after_the_timeout(tmp_path):
    "Case 9: neither `init_distributed` nor `DistributedCB` took a timeout, and the error did not say who stalled."
    p = run(TORCHRUN, tmp_path, 'stall', timeout=120)  # (a hang, as before, fails)
    msg = torch.load(tmp_path / 'stall_r0_w2.pt', weights_only=False)['stall']
    assert 'process(es) 1 did not reach it' in msg and '0:00:03' in msg, msg + p.stderr[-2000:]

def test_csv_logger_writes_from_the_first_process_only(tmp_path, monkeypatch):
    "Case 2 on one process: as process 1 of 2, nothing is written."
    monkeypatch.setattr(procs, 'rank', lambda: 1)
    log = CSVLogger(tmp_path / 'h.csv')
    learn = TrainLearner(nn.Linear(2, 2), DataLoaders([(torch.randn(4, 2), torch.randint(0, 2, (4,)))], []),
                         F.cross_entropy, cbs=[MetricsCB(), log])
    learn.logging = False
    learn.fit(1, valid=False)
    assert not (tmp_path / 'h.csv').exists() and list(tmp_path.iterdir()) == []

def toy(n=64, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoaders(TensorDataLoader(x, y, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(1)),
                       TensorDataLoader(x[:16], y[:16], batch_size=8))

def learner(cbs=(), dls=None):
    torch.manual_seed(0)
    return TrainLearner(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), dls or toy(), F.cross_entropy,
                        lr=1e-2, opt_func=torch.optim.Adam, cbs=[MetricsCB(), *cbs])

def test_a_numpy_number_in_the_history_is_saved_as_a_float(tmp_path):
    "Case 3: an np.float64 in the history made every checkpoint unloadable."
    learn = learner()
    learn.fit(1)
    learn.history[-1]['valid_f1'] = np.float64(0.25)
    learn.history[-1]['count'] = np.int64(3)
    learn.save(tmp_path / 'm.pt')
    fresh = learner()
    fresh.load(tmp_path / 'm.pt')
    assert fresh.history[-1]['valid_f1'] == 0.25 and type(fresh.history[-1]['valid_f1']) is float
    assert type(fresh.history[-1]['count']) is int
    learn.history[-1]['bad'] = object()
    with pytest.raises(ValueError, match=r"`history\[0\]\['bad'\]` is a object, which a checkpoint cannot hold"):
        learn.save(tmp_path / 'm.pt')
    fresh.load(tmp_path / 'm.pt')  # the failed save left the previous checkpoint whole
    assert _plain({'a': (np.float32(1.5), [np.arange(2)])}, 'x')['a'][0] == 1.5

def test_the_load_error_keeps_its_whole_reason(tmp_path):
    (tmp_path / 'bad.pt').write_bytes(b'x' * 10)
    with pytest.raises(ValueError, match=r'is damaged') as e: learner().load(tmp_path / 'bad.pt')
    assert str(e.value).endswith('torch.load.html.)')  # the reason was cut at 200 characters

class Stop(Callback):
    "Interrupt the fit at (epoch, iter) of training, after that batch's checkpoint."
    order = 200
    def __init__(self, epoch, it): self.at = epoch, it
    def after_batch(self, learn):
        if learn.training and (learn.epoch, learn.iter) == self.at: raise KeyboardInterrupt

def resumed(make, tmp_path, at, n=2, **fit):
    "The parameters after `n` epochs uninterrupted, and after an interruption at `at` and a resume."
    whole = make([])
    whole.fit(n, **fit)
    mon = 'valid_loss' if fit.get('valid', True) else 'train_loss'
    cut = make([SaveModelCB(tmp_path / 'ck.pt', mon, every_batches=1), Stop(*at)])
    with pytest.raises(KeyboardInterrupt): cut.fit(n, **fit)
    again = make([SaveModelCB(tmp_path / 'ck.pt', mon, every_batches=1)])
    again.fit(n, resume=tmp_path / 'ck_last.pt', **fit)
    return whole, again

def test_resume_between_accumulated_batches_is_exact(tmp_path):
    "Case 5: GradientAccumulation's pending gradients were not saved (difference 0.03)."
    def make(cbs): return learner([GradientAccumulation(24), *cbs])
    whole, again = resumed(make, tmp_path, (1, 2))  # 8-item batches: epoch 0 leaves 2, epoch 1 steps at 0; 1, 2 wait
    for p, q in zip(whole.model.parameters(), again.model.parameters()): assert torch.equal(p, q)

def test_resume_between_sdmgrad_consecutive_batches_is_exact(tmp_path):
    "Case 5: SDMGrad's pending Jacobians (`sdm_batches='consecutive'`) were not saved (difference 0.1)."
    def make(cbs):
        torch.manual_seed(0)
        return TrainLearner(tiny_mtl_model(2, dtype=torch.float64), synthetic_tasks(2, n=96, bs=8, dtype=torch.float64),
                            MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05,
                            cbs=[MetricsCB(), MultiTaskGradCB(SDMGrad(), sdm_batches='consecutive'), *cbs])
    whole, again = resumed(make, tmp_path, (0, 4), valid=False)  # after batch 4: the 5th's Jacobian is pending
    for p, q in zip(whole.model.parameters(), again.model.parameters()): torch.testing.assert_close(p, q, rtol=0, atol=1e-12)

def test_two_callbacks_of_a_class_keep_their_own_state_in_any_order(tmp_path):
    "Case 8: states were keyed by class name and position: resumed in another order, two trackers swapped their bests."
    a, b = EarlyStoppingCB('valid_loss', patience=5), EarlyStoppingCB('train_loss', patience=5)
    learn = learner([a, b])
    learn.fit(1)
    learn.save(tmp_path / 'm.pt')
    a2, b2 = EarlyStoppingCB('valid_loss', patience=5), EarlyStoppingCB('train_loss', patience=5)
    fresh = learner([b2, a2])
    fresh.load(tmp_path / 'm.pt')
    fresh.fit(0)
    assert (a2.best, b2.best) == (a.best, b.best) and a.best != b.best

def test_a_key_shared_by_two_callbacks_is_refused_and_a_name_settles_it(tmp_path):
    with pytest.raises(ValueError, match=r"two callbacks, a GradientAccumulation and a GradientAccumulation, .*key "
                                         r"'GradientAccumulation'.*`name`"):
        learner([GradientAccumulation(8), GradientAccumulation(16)]).fit(1)
    g = GradientAccumulation(16)
    g.name = 'acc16'
    learner([GradientAccumulation(8), g]).fit(1)

def test_a_saved_state_of_another_kind_is_refused_and_an_orphan_is_named(tmp_path):
    learn = learner([SaveModelCB(tmp_path / 'ck.pt', every_batches=1), Stop(0, 2)])
    with pytest.raises(KeyboardInterrupt): learn.fit(2)
    other = GradientAccumulation(8)
    other.name = 'MetricsCB'
    with pytest.raises(ValueError, match=r"the checkpoint's state 'MetricsCB' is a MetricsCB's, but this fit's callback "
                                         r"'MetricsCB' is a GradientAccumulation"):
        TrainLearner(learn.model, toy(), F.cross_entropy, opt_func=torch.optim.Adam, cbs=[other]).fit(2, resume=tmp_path / 'ck_last.pt')
    with pytest.warns(UserWarning, match=r"state of callback 'SaveModelCB\(valid_loss\)' \(SaveModelCB\), which no callback"):
        TrainLearner(learn.model, toy(), F.cross_entropy, opt_func=torch.optim.Adam, cbs=[MetricsCB()]).fit(2, resume=tmp_path / 'ck_last.pt')

def test_a_compiled_model_saves_the_plain_model_keys(tmp_path):
    "Case 12: a torch.compile'd model's checkpoint had `_orig_mod.` keys and did not load into the plain model."
    learn = learner()
    learn.model = torch.compile(learn.model, backend='eager')
    learn.fit(1)
    learn.save(tmp_path / 'c.pt')
    plain = learner()
    plain.load(tmp_path / 'c.pt')
    for p, q in zip(unwrap(learn.model).parameters(), plain.model.parameters()): assert torch.equal(p, q)
    compiled = learner()
    compiled.model = torch.compile(compiled.model, backend='eager')
    compiled.load(tmp_path / 'c.pt')  # and into a compiled model as well

def test_init_distributed_checks_its_timeout():
    from datetime import timedelta
    from mtlearn.accel import DistributedCB
    with pytest.raises(ValueError, match=r'`timeout` should be a positive datetime.timedelta.*found timeout = 5'):
        procs.init_distributed(timeout=5)
    assert DistributedCB(timeout=timedelta(seconds=30)).timeout == timedelta(seconds=30)

def test_a_restarted_job_comes_up(tmp_path):
    "Case 11: under `torchrun --max-restarts` the restarted attempt came up in about half the tries; each try here must."
    script = RUN.with_name('restart_run.py')
    for i in range(3):
        out = tmp_path / str(i)
        out.mkdir()
        p = subprocess.run(TORCHRUN[:-2] + ['--nproc_per_node', '2', '--max-restarts', '1', str(script), str(out)],
                           env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert [(out / f'ok_r{r}').read_text() for r in (0, 1)] == ['0.5', '0.5']
