"""The core's composition cases on 1 process or, under torchrun, on 2, with the same global batch:
`python core_run.py OUT [MODE]` / `torchrun --nproc_per_node 2 core_run.py OUT [MODE]`.
MODE 'main' (default) runs the cases that must succeed; 'uneven' and 'stall' the ones that must fail clearly."""
import os, sys, time
from datetime import timedelta
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy
from mtlearn.learner import *
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.accel import DistributedCB, init_distributed
from mtlearn.tracker import CSVLogger, SaveModelCB
from mtlearn.aggregators import SDMGrad
from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, synthetic_tasks, tiny_mtl_model

torch.set_num_threads(1)
out, mode = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else 'main')
r, w = int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1'))
if mode != 'stall': init_distributed()  # (there DistributedCB joins, with its time-out)
res = {}
flat = lambda m: torch.cat([p.detach().flatten() for p in unwrap(m).parameters()])

def data(n=96, bs=16):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    xv, yv = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    return DataLoaders(TensorDataLoader(x, y, batch_size=bs // w, shuffle=True, generator=torch.Generator().manual_seed(3)),
                       TensorDataLoader(xv, yv, batch_size=8))

def learner(cbs=(), dropout=0.):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))
    torch.manual_seed(100 + r)  # every process draws its own dropout masks
    return TrainLearner(model, data(), F.cross_entropy, lr=1e-2, opt_func=torch.optim.Adam,
                        cbs=[DistributedCB(), MetricsCB(acc=MulticlassAccuracy()), *cbs])

class Crash(Callback):
    "Fail in the middle of epoch 1, as a killed job would (after the checkpoint of the batch before)."
    order = 200
    def after_batch(self, learn):
        if learn.training and learn.epoch == 1 and learn.iter == 2: raise KeyboardInterrupt('crash')

if mode == 'main':
    # 1: the one-cycle schedule anneals over the sharded epoch
    learn = learner()
    learn.logging = False
    learn.fit_one_cycle(2, 1e-2)
    res['one_cycle_lr'], res['one_cycle'] = learn.opt.param_groups[0]['lr'], flat(learn.model)
    # 2: a CSV log written under torchrun (by one process)
    for i in range(3):
        learn = learner([CSVLogger(out / 'log.csv')])
        learn.logging = False
        learn.fit(2)
    res['csv_rows'] = len(CSVLogger(out / 'log.csv').read()) if rank() == 0 else None
    # 6, 7: resumed mid-epoch, with per-process dropout: the history and parameters of the uninterrupted run
    learn = learner(dropout=0.3)
    learn.logging = False
    learn.fit(3)
    res['whole'], res['whole_hist'] = flat(learn.model), learn.history
    learn = learner([SaveModelCB(out / 'ck.pt', every_batches=1), Crash()], dropout=0.3)
    learn.logging = False
    try: learn.fit(3)
    except KeyboardInterrupt: pass
    learn = learner([SaveModelCB(out / 'ck.pt', every_batches=1)], dropout=0.3)
    learn.logging = False
    learn.fit(3, resume=out / 'ck_last.pt')
    res['resumed'], res['resumed_hist'] = flat(learn.model), learn.history
    # 5 with 6: SDMGrad's Jacobians waiting for their third batch, and the guard, resumed on every process
    def mtl(cbs):
        torch.manual_seed(0)
        dls = synthetic_tasks(2, n=96, bs=24 // w, dtype=torch.float64)
        dls.valid = []
        learn = TrainLearner(tiny_mtl_model(2, dtype=torch.float64), dls, MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05,
                             cbs=[DistributedCB(), MetricsCB(), MultiTaskGradCB(SDMGrad(), sdm_batches='consecutive'), *cbs])
        learn.logging = False
        return learn
    learn = mtl([])
    learn.fit(2, valid=False)
    res['mtl_whole'] = flat(learn.model)
    learn = mtl([SaveModelCB(out / 'mk.pt', 'train_loss', every_batches=1), Crash()])
    try: learn.fit(2, valid=False)
    except KeyboardInterrupt: pass
    learn = mtl([SaveModelCB(out / 'mk.pt', 'train_loss', every_batches=1)])
    learn.fit(2, valid=False, resume=out / 'mk_last.pt')
    res['mtl_resumed'] = flat(learn.model)
elif mode == 'uneven':  # 10: shards with different numbers of batches are refused, naming the counts, on every process
    x, y = torch.randn(40 + 16 * r, 6), torch.randint(0, 3, (40 + 16 * r,))
    dl = TensorDataLoader(x, y, batch_size=8).shard(r, w, pad=False)
    dl.world = w  # already this process's share: DistributedCB leaves it as it is
    try:
        TrainLearner(nn.Linear(6, 3), DataLoaders(dl, []), F.cross_entropy, cbs=[DistributedCB()]).fit(1, valid=False)
        res['uneven'] = 'no error'
    except ValueError as e: res['uneven'] = str(e)
elif mode == 'stall':  # 9: a process that stalls: the others' error names it, after the time-out given
    class Stall(Callback):
        def after_batch(self, learn):
            if learn.iter == 1 and rank() == 1: time.sleep(12)
    learn = TrainLearner(nn.Linear(6, 3), data(), F.cross_entropy, cbs=[DistributedCB(timeout=timedelta(seconds=3)),
                                                                        TerminateOnNaNCB(), Stall()])
    try:
        learn.fit(1, valid=False)
        res['stall'] = 'no error'
    except RuntimeError as e: res['stall'] = f"{e} {' '.join(getattr(e, '__notes__', []))}"
    torch.save(res, out / f'{mode}_r{r}_w{w}.pt')
    sys.exit(0)  # (the process group is broken: no barrier)
torch.save(res, out / f'{mode}_r{r}_w{w}.pt')
if w > 1:
    torch.distributed.barrier(); torch.distributed.destroy_process_group()
