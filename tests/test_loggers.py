"""The experiment loggers, with their real packages: each file read back with the package's own reader (TensorBoard's
EventAccumulator, MLflow's client, the W&B run file's records), against `learn.history` and the per-step values."""
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from torch import nn, optim

from mtlearn.learner import *
from mtlearn.accel import MixedPrecision
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.loggers import LoggerCB, TensorBoardLogger, WandbLogger, MLflowLogger, hparams
from mtlearn.sgd import RecorderCB
from mtlearn.tracker import SaveModelCB

pytest.importorskip('tensorboard'); pytest.importorskip('wandb'); pytest.importorskip('mlflow')

KINDS = {'tensorboard': lambda d, **kw: TensorBoardLogger(d/'tb', **kw),
         'wandb': lambda d, **kw: WandbLogger(save_dir=d, **kw),
         'mlflow': lambda d, **kw: MLflowLogger(tracking_uri=d/'mlruns', **kw)}

def data(n=160, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    return DataLoaders(TensorDataLoader(x, y, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(1)),
                       TensorDataLoader(x[:48], y[:48], batch_size=16))

class Seen(Callback):
    "What each training step used: the loss (read here, in the test only) and the learning rate."
    order = 104  # after the schedulers, before the loggers (105)
    def before_fit(self, learn): self.loss, self.lr = [], []
    def before_batch(self, learn):
        if learn.training: self.lr.append(learn.opt.param_groups[0]['lr'])
    def after_batch(self, learn):
        if learn.training: self.loss.append(learn.loss.item())

def learner(cbs=(), seed=0, dls=None):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return TrainLearner(model, dls or data(), F.cross_entropy, lr=0.05, opt_func=optim.Adam, cbs=[MetricsCB(), *cbs])

@pytest.mark.parametrize('kind', list(KINDS))
def test_the_logged_numbers_are_the_runs(kind, tmp_path):
    "Every epoch's row of the history, and every 3rd step's loss and learning rate, as the run had them."
    lg, seen = KINDS[kind](tmp_path, log_every_n_steps=3), Seen()
    learn = learner([lg, seen, RecorderCB(lr=lambda cb: cb.pg['lr'])])
    learn.fit_one_cycle(3, 0.05, record=False)
    r = lg.read()
    assert [e for _, e in r['epoch']] == [0, 1, 2]
    for k in ('train_loss', 'valid_loss'):
        assert len(r[k]) == 3
        for (step, v), row in zip(r[k], learn.history): assert v == pytest.approx(row[k], rel=1e-6), (k, step)
    assert [s for s, _ in r['epoch']] == [10, 20, 30]  # each epoch's values at its last step (10 batches an epoch)
    steps = [s for s, _ in r['train_loss_step']]
    assert steps == list(range(3, 31, 3))
    for s, v in r['train_loss_step']: assert v == pytest.approx(seen.loss[s - 1], rel=1e-6)
    for s, v in r['lr']: assert v == pytest.approx(seen.lr[s - 1], rel=1e-6)  # the rate the step was taken with
    assert {s for s, _ in r['mom']} == set(steps)

def test_hyperparameters_and_figures(tmp_path):
    lg = MLflowLogger(tracking_uri=tmp_path/'mlruns', log_every_n_steps=5)
    learn = learner([lg, SaveModelCB(tmp_path/'m.pt'), RecorderCB(lr=lambda cb: cb.pg['lr'])])
    learn.fit(1)
    h = hparams(learn)
    assert h['model'] == 'Sequential' and h['n_params'] == 6 * 16 + 16 + 16 * 3 + 3 and h['opt'] == 'Adam'
    assert h['opt.lr'] == 0.05 and h['bs'] == 16 and h['n_epochs'] == 1 and h['loss_func'] == 'cross_entropy'
    assert h['MetricsCB.train_metrics'] is True and h['SaveModelCB(valid_loss).monitor'] == 'valid_loss'
    run = lg.client.get_run(lg.run_id)
    assert run.data.params['opt.lr'] == '0.05' and run.data.params['SaveModelCB_valid_loss_.monitor'] == 'valid_loss'
    assert run.info.status == 'FINISHED'
    arts = {a.path for a in lg.client.list_artifacts(lg.run_id)}
    assert 'records.png' in arts

class Boom(Callback):
    order = 200
    def __init__(self, at): self.at = at
    def after_batch(self, learn):
        if learn.training and learn.epoch == 1 and learn.iter == self.at: raise RuntimeError('the machine stopped')

@pytest.mark.parametrize('kind', list(KINDS))
def test_a_failed_fit_resumes_into_the_same_run(kind, tmp_path):
    """A fit that dies mid-epoch closes its run with what it sampled (MLflow: FAILED); a new learner resumed from the
    last checkpoint logs to the same run, and each step's last value is the resumed run's."""
    lg = KINDS[kind](tmp_path, log_every_n_steps=2)
    first = learner([lg, SaveModelCB(tmp_path/'m.pt', every_batches=4), Boom(6), Seen()])
    with pytest.raises(RuntimeError, match='the machine stopped'): first.fit(3)
    assert lg.step == 17  # 10 + 7 batches begun
    got = lg.read()
    assert max(s for s, _ in got['train_loss_step']) == 16  # steps 2..16 were written when the fit failed
    if kind == 'mlflow': assert lg.client.get_run(lg.run_id).info.status == 'FAILED'
    lg2, seen = KINDS[kind](tmp_path/'other', log_every_n_steps=2), Seen()
    second = learner([lg2, SaveModelCB(tmp_path/'m.pt', every_batches=4), seen])
    second.fit(3, resume=tmp_path/'m_last.pt')  # written after batch 4 of epoch 1: step 14
    assert lg2.run_id == lg.run_id and lg2.step == 30
    r = lg2.read()
    last = {}
    for s, v in r['train_loss_step']: last[s] = v
    files = sorted(str(p.relative_to(tmp_path)) + f' {p.stat().st_size}' for p in tmp_path.rglob('*.wandb'))
    assert sorted(last) == list(range(2, 31, 2)), files
    for s in range(16, 31, 2): assert last[s] == pytest.approx(seen.loss[s - 15], rel=1e-6)  # the resumed run's
    if kind == 'tensorboard': assert [s for s, _ in r['train_loss_step']] == list(range(2, 31, 2))  # 16 purged once
    assert [e for _, e in r['epoch']][-2:] == [1, 2]

def test_multitask_records(tmp_path):
    "MultiTaskGradCB's task losses and weights per step, each task's validation loss per epoch, and its figures."
    from mtlearn.aggregators import UPGrad
    from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, synthetic_tasks, tiny_mtl_model
    torch.manual_seed(0)
    mtg, lg = MultiTaskGradCB(UPGrad()), TensorBoardLogger(tmp_path, log_every_n_steps=1)
    learn = TrainLearner(tiny_mtl_model(2), synthetic_tasks(2, n=256), MultiTaskLoss(left=F.mse_loss, right=F.mse_loss),
                         lr=0.05, cbs=[MetricsCB(), mtg, lg])
    learn.fit(2)
    r, L, W, V = lg.read(), mtg.losses.values(), mtg.weights.values(), mtg.val_losses.values()
    for i, t in enumerate(('left', 'right')):
        assert [v for _, v in r[f'task_loss/{t}']] == pytest.approx(L[:, i].tolist(), rel=1e-6)
        assert [v for _, v in r[f'task_weight/{t}']] == pytest.approx(W[:, i].tolist(), rel=1e-6)
        assert [v for _, v in r[f'valid_task_loss/{t}']] == pytest.approx(V[:, i].tolist(), rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(lg.log_dir, size_guidance={'images': 0}); ea.Reload()
    assert {'task_losses', 'task_weights'} <= set(ea.Tags()['images'])

def test_one_host_read_per_flush_not_per_batch(tmp_path, monkeypatch):
    "60 sampled steps: read from the device at each epoch's end only (and at most every `flush_every` samples)."
    reads = []
    flush = DeviceSeries.flush
    def counted(self):
        if self.n or self.full: reads.append(len(self))
        return flush(self)
    lg = TensorBoardLogger(tmp_path, log_every_n_steps=1)
    learn = learner([lg], dls=data(n=480))
    monkeypatch.setattr(DeviceSeries, 'flush', counted)
    learn.fit(2, valid=False)
    assert reads and all(n <= LoggerCB.flush_every for n in reads)
    lg_reads = [n for n in reads if n in (30,)]  # the logger's: one per epoch, 30 samples each
    assert len(lg_reads) == 2 and len(lg.read()['train_loss_step']) == 60

def test_mixed_precision_logs_the_unscaled_loss(tmp_path):
    lg, seen = TensorBoardLogger(tmp_path, log_every_n_steps=1), Seen()
    torch.manual_seed(0)
    learn = Learner(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), data(), F.cross_entropy, lr=0.05,
                    cbs=[MixedPrecision(), MetricsCB(), lg, seen])
    learn.fit(1)
    r = lg.read()
    assert [v for _, v in r['train_loss_step']] == pytest.approx(seen.loss, rel=1e-6)

def test_bad_settings_and_a_missing_package(tmp_path, monkeypatch):
    for bad in (0, 2.5, True, '10'):
        with pytest.raises(ValueError, match='`log_every_n_steps` should be an int ≥ 1; found log_every_n_steps = '):
            TensorBoardLogger(log_every_n_steps=bad)
    with pytest.raises(ValueError, match="`log_figures` should be True or False; found log_figures = 'yes'"):
        MLflowLogger(log_figures='yes')
    with pytest.raises(ValueError, match="`mode` should be 'offline', 'online' or 'disabled'; found mode = 'cloud'"):
        WandbLogger(mode='cloud')
    monkeypatch.setitem(sys.modules, 'wandb', None)
    learn = learner([WandbLogger(save_dir=tmp_path)])
    with pytest.raises(ImportError, match=r'pip install "mtlearn\[wandb\]"'): learn.fit(1)

def test_importing_the_loggers_needs_none_of_the_packages():
    code = ("import sys, mtlearn.all; "
            "assert not {'wandb', 'mlflow', 'tensorboard'} & set(sys.modules), {'wandb', 'mlflow', 'tensorboard'} & set(sys.modules)")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]

def test_only_the_first_of_two_processes_writes(tmp_path):
    "Under torchrun: one run per logger, written by process 0, with the global history both processes have."
    from test_distributed import launch  # (once more if gloo's C++ thread aborts at random, with a warning)
    run = Path(__file__).with_name('loggers_run.py')
    p = launch([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(run),
                str(tmp_path)], {**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 0, p.stderr[:3000] + '\n...\n' + p.stderr[-2000:]
    r0, r1 = (json.load(open(tmp_path/f'r{r}_w2.json')) for r in (0, 1))
    assert r0['history'] == r1['history'] and r1['run_ids'] == [None] * 3 and r0['steps'] == r1['steps'] == [12] * 3  # 6 local batches an epoch
    assert [d.name for d in (tmp_path/'tb').iterdir()] == ['version_0']
    assert len(list((tmp_path/'wandb').glob('offline-run-*'))) == 1
    tb = TensorBoardLogger(tmp_path/'tb'); tb.run_id = r0['run_ids'][0]
    wb = WandbLogger(save_dir=tmp_path); wb.run_id = r0['run_ids'][1]
    ml = MLflowLogger(tracking_uri=tmp_path/'mlruns'); ml.run_id = r0['run_ids'][2]
    for lg in (tb, wb, ml):
        r = lg.read()
        assert [v for _, v in r['valid_loss']] == pytest.approx([h['valid_loss'] for h in r0['history']], rel=1e-6)
        assert {'task_weight/a', 'task_weight/b', 'valid_task_loss/a'} <= set(r)

def test_the_wandb_run_file_is_read_whole_or_from_its_tail(tmp_path):
    "A run file of several 32 KiB blocks: its tail's records (where the logger looks for the exit) end the whole list."
    from mtlearn.loggers import _wandb_records
    lg = WandbLogger(save_dir=tmp_path, log_every_n_steps=1)
    learner([lg], dls=data(n=1600)).fit(3)
    f = next((tmp_path/'wandb').glob(f'*-{lg.run_id}/run-{lg.run_id}.wandb'))
    whole = [r.SerializeToString() for r in _wandb_records(f)]
    tail = [r.SerializeToString() for r in _wandb_records(f, tail=40_000)]
    assert f.stat().st_size > 3 * 32768 and 0 < len(tail) < len(whole)
    assert whole[-len(tail):] == tail
    assert any(r.WhichOneof('record_type') == 'exit' for r in _wandb_records(f, tail=40_000))
