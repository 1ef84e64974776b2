"""mtlearn against the training loops a user would pick instead: fastai 2.8's `Learner` and Lightning 2.6's `Trainer`,
and a hand-written PyTorch loop, on the same model, data, optimiser, schedule and metric, side by side from one run.

Each variant trains Fashion-MNIST (the same tensor-backed loaders, images normalised per batch) with AdamW and a
one-cycle schedule for --epochs, computes the validation accuracy every epoch, and draws its own progress bar to a
pseudo-terminal (mtlearn's ProgressCB, fastai's ProgressCallback, Lightning's default bar; the hand loop prints a line
per epoch). Every repetition runs all variants one after the other, in a rotated order, plus the hand loop a second
time (the A/A control: the noise left). The runs are sequential, not interleaved batch by batch as learner_overhead.py
does (fastai's and Lightning's loops cannot be driven a batch at a time from outside), so read the ratios against the
A/A line. Printed: median seconds, the ratio to the hand loop, and the extra microseconds per batch.

Install the peers in a benchmark-only environment, never in mtlearn's requirements (fastai declares torchvision, which
has no CPU build here; fastai 2.8 needs fastcore 2, which this venv shadows the dev environment's fastcore 1 with):

    python -m venv --system-site-packages /tmp/peers && . /tmp/peers/bin/activate
    pip install --no-deps "fastai==2.8.*" "pytorch-lightning==2.6.*" "fastcore>=2.2.22" "plum-dispatch<2.10" fastdownload \\
        fasttransform beartype rich scikit-learn threadpoolctl joblib narwhals cloudpickle lightning-utilities torchmetrics
    python bench/peers.py [--epochs 2] [--reps 3] [--models cnn mlp] [--n_train 60000]
"""
import argparse, os, pty, statistics, sys, threading, time, warnings, logging
from functools import partial
import torch, torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy
from mtlearn.datasets import DataLoaders, load_fashion_mnist
from mtlearn.learner import TrainLearner, DeviceCB, MetricsCB, ProgressCB
import mtlearn.sgd  # noqa: F401 (fit_one_cycle)
from mtlearn.cli import simple_cnn
from learner_overhead import steady_malloc  # bench/ is on sys.path when this script runs

def mlp(): return nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
MODELS = {'cnn': (simple_cnn, 256, 1e-2), 'mlp': (mlp, 1024, 1e-2)}

class Terminal:
    "A pseudo-terminal whose output is read and thrown away by a thread (so that writers never block); `file` is its terminal end."
    def __init__(self):
        self.master, slave = pty.openpty()
        self.file = os.fdopen(slave, 'w', buffering=1)
        self.t = threading.Thread(target=self._drain, daemon=True); self.t.start()
    def _drain(self):
        try:
            while os.read(self.master, 1 << 16): pass
        except OSError: pass
    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.file
        return self.file
    def __exit__(self, *a): sys.stdout, sys.stderr = self.saved

def hand(model, dls, epochs, lr, out):
    opt = optim.AdamW(model.parameters(), lr)
    sched = optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(dls.train))
    for epoch in range(epochs):
        model.train()
        for xb, yb in dls.train:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward(); opt.step(); sched.step(); opt.zero_grad()
        model.eval()
        correct, n = torch.zeros((), dtype=torch.long), 0
        with torch.no_grad():
            for xb, yb in dls.valid: correct += (model(xb).argmax(1) == yb).sum(); n += len(yb)
        print(f'epoch {epoch} accuracy {correct.item() / n:.3f}', file=out, flush=True)

def with_mtlearn(model, dls, epochs, lr, out):
    learn = TrainLearner(model, dls, F.cross_entropy, lr=lr, opt_func=optim.AdamW,
                         cbs=[DeviceCB('cpu'), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(stream=out)])
    learn.fit_one_cycle(epochs, lr)

def with_fastai(model, dls, epochs, lr, out):
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders as FDL
    from fastai.metrics import accuracy
    from fastai.optimizer import OptimWrapper
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401
    learn = Learner(FDL(dls.train, dls.valid), model, loss_func=F.cross_entropy, opt_func=partial(OptimWrapper, opt=optim.AdamW), metrics=accuracy)
    learn.fit_one_cycle(epochs, lr)

def with_lightning(model, dls, epochs, lr, out):
    import pytorch_lightning as pl
    class Module(pl.LightningModule):
        def __init__(self): super().__init__(); self.m = model
        def training_step(self, b, i): return F.cross_entropy(self.m(b[0]), b[1])
        def validation_step(self, b, i): self.log('accuracy', (self.m(b[0]).argmax(1) == b[1]).float().mean(), prog_bar=True)
        def configure_optimizers(self):
            o = optim.AdamW(self.parameters(), lr)
            return {'optimizer': o, 'lr_scheduler': {'scheduler': optim.lr_scheduler.OneCycleLR(o, lr, total_steps=epochs * len(dls.train)), 'interval': 'step'}}
    trainer = pl.Trainer(max_epochs=epochs, accelerator='cpu', devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), dls.train, dls.valid)

VARIANTS = {'hand loop': hand, 'mtlearn': with_mtlearn, 'fastai': with_fastai, 'Lightning': with_lightning, 'hand loop (A/A)': hand}

def main(models=('cnn', 'mlp'), epochs=2, reps=3, n_train=60_000):
    steady_malloc()
    torch.set_num_threads(2)
    warnings.filterwarnings('ignore')
    for nm in ('lightning.pytorch', 'pytorch_lightning', 'pytorch_lightning.utilities.rank_zero', 'lightning.pytorch.utilities.rank_zero', 'lightning_fabric'):
        logging.getLogger(nm).setLevel(logging.ERROR)  # (Lightning's banner and tips, each fit)
    dd = load_fashion_mnist()
    if n_train < len(dd['train']): dd['train'] = dd['train'].select(range(n_train))
    term = Terminal()
    import fastai, pytorch_lightning
    print(f'torch {torch.__version__}, fastai {fastai.__version__}, Lightning {pytorch_lightning.__version__}; {torch.get_num_threads()} threads; '
          f'{epochs} epochs on {len(dd["train"]):,} images; median of {reps} repetitions, variants in rotated order; bars drawn to a pseudo-terminal')
    goals = []
    for name in models:
        make, bs, lr = MODELS[name]
        dls = DataLoaders.from_dd_tensors(dd, bs, mean=0.28, std=0.35, flat=name == 'mlp')
        n_batches = epochs * (len(dls.train) + len(dls.valid))
        times = {v: [] for v in VARIANTS}
        names = list(VARIANTS)
        for r in range(reps):
            for v in names[r % len(names):] + names[:r % len(names)]:
                torch.manual_seed(0)
                model = make()
                with term as out:
                    t = time.perf_counter()
                    VARIANTS[v](model, dls, epochs, lr, out)
                    times[v].append(time.perf_counter() - t)
        base = statistics.median(times['hand loop'])
        print(f"\n{name} (batch {bs}, {n_batches} batches per run)\n{'variant':<18}{'seconds':>9}{'ratio':>8}{'µs/batch':>10}")
        over = {}
        for v, ts in times.items():
            s = statistics.median(ts)
            over[v] = (s - base) / n_batches * 1e6
            print(f'{v:<18}{s:>9.2f}{s / base:>8.3f}{over[v]:>10.0f}', flush=True)
        ratio, limit = statistics.median(times['mtlearn']) / base, {'cnn': 1.02, 'mlp': 1.05}[name]
        goals.append(f"GOAL peers_{name}_mtlearn_vs_hand_loop {ratio:.3f} <= {limit} {'PASS' if ratio <= limit else 'MISS'}")
        lowest = over['mtlearn'] <= min(over['fastai'], over['Lightning'])
        goals.append(f"GOAL peers_{name}_mtlearn_overhead_lowest {over['mtlearn']:.0f} <= min({over['fastai']:.0f}, {over['Lightning']:.0f}) µs/batch {'PASS' if lowest else 'MISS'}")
    print()
    for g in goals: print(g)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='*', default=['cnn', 'mlp'], choices=list(MODELS))
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--n_train', type=int, default=60_000)
    a = p.parse_args()
    main(tuple(a.models), a.epochs, a.reps, a.n_train)
