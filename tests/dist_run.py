"Trainings run on 1 process or, under torchrun, on 2, with the same global batch: `python dist_run.py OUT` / `torchrun --nproc_per_node 2 dist_run.py OUT`."
import sys, torch
from pathlib import Path
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy
from mtlearn.learner import *
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.accel import CompileCB, DistributedCB, init_distributed
from mtlearn.aggregators import Mean, MGDA, UPGrad, UPGradWeighting, SDMGrad, Random
from mtlearn.gramian import IWRMCB
from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, tiny_mtl_model
from mtlearn.tracker import EarlyStoppingCB

torch.set_num_threads(1)
out = Path(sys.argv[1])
r, w = init_distributed()
res = {}
flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])

def single_task():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    xv, yv = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)  # 50: the processes' shares differ, none is padded
    torch.manual_seed(0)
    dls = DataLoaders(TensorDataLoader(x, y, batch_size=16 // w, shuffle=True, generator=torch.Generator().manual_seed(3)), TensorDataLoader(xv, yv, batch_size=8))
    return TrainLearner(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), dls, F.cross_entropy, lr=1e-2, opt_func=torch.optim.Adam,
                        cbs=[DistributedCB(), MetricsCB(acc=MulticlassAccuracy())])

learn = single_task(); learn.fit(2)
res['single'], res['single_hist'] = flat(learn.model), learn.history
learn.save(out / 'single.pt')
compiled = single_task(); compiled.cbs.append(CompileCB()); compiled.fit(2)  # the model compiled, inside DDP
res['single_compiled'] = flat(compiled.model)
other = single_task(); other.load(out / 'single.pt')
res['loaded_equal'] = torch.equal(flat(other.model), flat(learn.model))
res['lr_find'] = single_task().lr_find(plot=False, start_lr=1e-4, gamma=1.5, max_epochs=20)

def multi_task(agg, mode='params', bs=24, dtype=torch.float32, **kw):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(144, 8, generator=g)
    ys = [x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(144, 1, generator=g) for _ in range(3)]
    x, ys = x.to(dtype), [y.to(dtype) for y in ys]
    torch.manual_seed(0)
    dls = DataLoaders(TensorDataLoader(x, *ys, batch_size=bs // w, shuffle=True, generator=torch.Generator().manual_seed(4)), TensorDataLoader(x[:40], *[y[:40] for y in ys], batch_size=10))
    cb = MultiTaskGradCB(agg, mode=mode, **kw)
    learn = TrainLearner(tiny_mtl_model(3, dtype=dtype), dls, MultiTaskLoss(*[F.mse_loss] * 3), lr=0.05, cbs=[DistributedCB(), cb])
    learn.logging = False
    learn.fit(2)
    return flat(learn.model), cb.weights.values()

for name, make, mode, kw in [('Mean', Mean, 'params', {}), ('MGDA', MGDA, 'params', {}), ('MGDA-f', MGDA, 'features', {}), ('UPGrad', UPGrad, 'params', {}),
                             ('UPGrad-f', UPGrad, 'features', {}), ('UPGrad-gram', UPGrad, 'gramian', {}), ('SDMGrad', SDMGrad, 'params', {}), ('SDMGrad-c', SDMGrad, 'params', {'sdm_batches': 'consecutive', 'dtype': torch.float64}),
                             ('Random', Random, 'params', {}), ('MGDA-g', MGDA, 'params', {'reduce': 'gramian'})]:
    res[name] = multi_task(make(), mode, **kw)

# every decision to stop is taken together: NaN on one process only
class NaNOn1(Callback):
    def after_loss(self, learn):
        if learn.training and learn.iter == 2 and rank() == w - 1: learn.loss = learn.loss * float('nan')
learn = single_task(); learn.cbs.append(NaNOn1()); learn.cbs.append(TerminateOnNaNCB()); learn.logging = False
learn.fit(1)
res['nan_stop_iter'] = learn.iter
try:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 8, generator=g)
    ys = [torch.randn(48, 1, generator=g) for _ in range(2)]
    if rank() == w - 1: ys[1][20:] = float('nan')
    dls = DataLoaders(TensorDataLoader(x, *ys, batch_size=8 // w), [])
    TrainLearner(tiny_mtl_model(2), dls, MultiTaskLoss(F.mse_loss, F.mse_loss), cbs=[DistributedCB(), MultiTaskGradCB(MGDA())]).fit(1, valid=False)
    res['mtl_nan'] = 'no error'
except FloatingPointError as e: res['mtl_nan'] = str(e).split(' (')[0]
def iwrm(weighting, reduce='exact'):
    "Instance-wise risk minimisation: a loss per sample, weighted from the Gramian of the global batch (or each process's own)."
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    torch.manual_seed(0)
    dls = DataLoaders(TensorDataLoader(x, y, batch_size=24 // w, shuffle=True, generator=torch.Generator().manual_seed(3)), [])
    cb = IWRMCB(weighting, reduce=reduce)
    learn = TrainLearner(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), dls, nn.CrossEntropyLoss(reduction='none'),
                         lr=0.1, cbs=[DistributedCB(), cb])
    learn.logging = False
    learn.fit(2, valid=False)
    return flat(learn.model), cb.weights.values()

res['IWRM'], res['IWRM-SDMGrad'] = iwrm(UPGradWeighting()), iwrm(SDMGrad())
res['IWRM-local'] = iwrm(UPGradWeighting(), 'local')[0]  # (the weights recorded are each process's own)
stop = EarlyStoppingCB(patience=1)
learn = single_task(); learn.cbs.append(stop); learn.logging = False; learn.fit(20)
res['early_stop_epoch'] = learn.epoch
torch.save(res, out / f'r{r}_w{w}.pt')
if w > 1:  # leave together: a process that exits with gloo's threads running can abort
    torch.distributed.barrier(); torch.distributed.destroy_process_group()
