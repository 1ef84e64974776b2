"The three loggers on 1 process or, under torchrun, on 2: `python loggers_run.py OUT` / `torchrun --nproc_per_node 2 loggers_run.py OUT`."
import json, sys, torch
from pathlib import Path
import torch.nn.functional as F
from mtlearn.learner import *
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.accel import DistributedCB, init_distributed
from mtlearn.aggregators import UPGrad
from mtlearn.loggers import TensorBoardLogger, WandbLogger, MLflowLogger
from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, tiny_mtl_model

torch.set_num_threads(1)
out = Path(sys.argv[1])
r, w = init_distributed()
g = torch.Generator().manual_seed(1)
x = torch.randn(96, 8, generator=g)
ys = [x @ torch.randn(8, 1, generator=g) for _ in range(2)]
dls = DataLoaders(TensorDataLoader(x, *ys, batch_size=16 // w, shuffle=True, generator=torch.Generator().manual_seed(4)),
                  TensorDataLoader(x[:32], *[y[:32] for y in ys], batch_size=8))
torch.manual_seed(0)
loggers = [TensorBoardLogger(out/'tb', log_every_n_steps=2), WandbLogger(save_dir=out, log_every_n_steps=2),
           MLflowLogger(tracking_uri=out/'mlruns', log_every_n_steps=2)]
learn = TrainLearner(tiny_mtl_model(2), dls, MultiTaskLoss(a=F.mse_loss, b=F.mse_loss), lr=0.05,
                     cbs=[DistributedCB(), MetricsCB(), MultiTaskGradCB(UPGrad()), *loggers])
learn.fit(2)
json.dump({'history': learn.history, 'run_ids': [lg.run_id for lg in loggers], 'steps': [lg.step for lg in loggers]},
          open(out/f'r{r}_w{w}.json', 'w'))
if w > 1:  # leave together: a process that exits with gloo's threads running can abort (as dist_run.py does)
    torch.distributed.barrier(); torch.distributed.destroy_process_group()
