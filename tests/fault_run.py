"A training run for the fault tests: `python fault_run.py DIR [resume|save-loop]`; writes DIR/final.pt when it finishes."
import os, sys, time, torch
from pathlib import Path
import torch.nn.functional as F
from torch import nn
from mtlearn.learner import TrainLearner, Callback, MetricsCB
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.tracker import SaveModelCB

torch.set_num_threads(1)
d, mode = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else 'fresh'

def learner(seed):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    torch.manual_seed(seed)
    dls = DataLoaders(TensorDataLoader(x, y, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1)), TensorDataLoader(x[:64], y[:64], batch_size=32))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    return TrainLearner(model, dls, F.cross_entropy, lr=1e-2, opt_func=torch.optim.Adam, cbs=[MetricsCB(), SaveModelCB(d/'ck.pt', every_batches=1)])

class Slow(Callback):
    "Give the parent time to interrupt somewhere in the run."
    def after_batch(self, learn): time.sleep(0.03)

if mode == 'save-loop':  # save again and again until killed
    learn = learner(0)
    learn.model = nn.Sequential(*[nn.Linear(256, 256) for _ in range(16)])
    for i in range(10_000):
        with torch.no_grad(): learn.model[0].bias.fill_(i)
        learn.save(d/'loop.pt')
        (d/'saved.tmp').write_text(str(i)); os.replace(d/'saved.tmp', d/'saved')  # the count, itself written whole
else:
    learn = learner(0 if mode == 'fresh' else 1)
    learn.fit_one_cycle(3, 1e-2, cbs=[Slow()], resume=(d/'ck_last.pt') if mode == 'resume' else None)
    torch.save(learn.model.state_dict(), d/'final.pt')
