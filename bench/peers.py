"""mtlearn against the training loops a user would pick instead: fastai 2.8's `Learner` and Lightning 2.6's `Trainer`,
and a hand-written PyTorch loop, on the same model, data, optimiser, schedule and metric, side by side from one run.

Each variant trains Fashion-MNIST (the same tensor-backed loaders, images normalised per batch) with AdamW and a
one-cycle schedule for --epochs, computes the validation accuracy every epoch (mtlearn with `train_metrics=False`, as
fastai does by default: none of the four computes a training accuracy), and draws its own progress bar to a
pseudo-terminal (mtlearn's ProgressCB, fastai's ProgressCallback, Lightning's default bar; the hand loop prints a line
per epoch). Timing as in learner_overhead.py: each variant runs against the hand loop in two threads that take turns
batch by batch (the turn passes at every fetch from the data loaders, which every framework consumes the same way),
each with its own clock, so that drift hits both alike, and again with the threads swapped, both sides starting from
the same model (`crossover`: a thread that runs slower cancels out); the hand loop against itself is the A/A control
(the noise left). Two readings, medians over the repetitions:
- paired: each side's own clock, the variant's seconds over its hand loop's (as learner_overhead.py reads it);
- pair total: the two runs' seconds together less the hand loop's (half its A/A pair's total in the same repetition).
  This one also counts what a variant costs its partner: Lightning's tqdm bar slowed the hand loop running beside it by
  about 10% (with the bar off, the partner ran as fast as in the other pairs), which made Lightning look faster than the
  hand loop in the paired reading. It is noisier, since the two pairs ran at different times.
Each reading gives the ratio to the hand loop and the extra microseconds per batch. The pair total subtracts a hand loop
timed in another pair, minutes apart, and on 2026-12-01 the machine's speed drifted by a third between pairs; so the
lowest-overhead goal is settled head to head instead: each peer against mtlearn itself, in the same interleaved way, the
peer's extra seconds per batch over mtlearn's (what a peer's bar costs its partner is then billed to mtlearn). The ratio
goals use the paired reading.

Install the peers in a benchmark-only environment, never in mtlearn's requirements (fastai declares torchvision, which
has no CPU build here; fastai 2.8 needs fastcore 2, which this venv shadows the dev environment's fastcore 1 with):

    python -m venv --system-site-packages /tmp/peers && . /tmp/peers/bin/activate
    pip install --no-deps "fastai==2.8.*" "pytorch-lightning==2.6.*" "fastcore>=2.2.22" "plum-dispatch<2.10" fastdownload \\
        fasttransform beartype rich scikit-learn threadpoolctl joblib narwhals cloudpickle lightning-utilities torchmetrics
    python bench/peers.py [--epochs 2] [--reps 3] [--models cnn mlp] [--n_train 60000]
"""
import argparse, contextlib, gc, io, os, pty, statistics, sys, threading, time, warnings, logging
from functools import partial
import torch, torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy
from mtlearn.datasets import DataLoaders, load_fashion_mnist
from mtlearn.learner import TrainLearner, DeviceCB, MetricsCB, ProgressCB
from learner_overhead import steady_malloc, crossover, simple_cnn  # bench/ is on sys.path when this script runs

def mlp(): return nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
MODELS = {'cnn': (simple_cnn, 256, 1e-2), 'mlp': (mlp, 1024, 1e-2)}

class _Drained(io.RawIOBase):
    "The terminal end of a pseudo-terminal whose output the writer reads back and drops right after writing it."
    def __init__(self, slave, master): self.slave, self.master = slave, master
    def writable(self): return True
    def isatty(self): return True
    def fileno(self): return self.slave
    def write(self, b):
        b = memoryview(b)
        for i in range(0, len(b), 1024):  # (in pieces smaller than the terminal's buffer, which nothing else empties)
            os.write(self.slave, b[i:i + 1024])
            try:
                while os.read(self.master, 1 << 16): pass
            except BlockingIOError: pass
        return len(b)

class Terminal:
    """A pseudo-terminal for the progress bars (`file` is its terminal end). Its output is read back and dropped by the
    writer itself, after each write, so that what a terminal costs is billed to whoever drew; a draining thread would run
    in whichever run's turn it happened to wake."""
    def __init__(self):
        master, slave = pty.openpty()
        os.set_blocking(master, False)
        self.file = io.TextIOWrapper(io.BufferedWriter(_Drained(slave, master)), line_buffering=True, write_through=True)
    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.file
        return self.file
    def __exit__(self, *a): sys.stdout, sys.stderr = self.saved

@contextlib.contextmanager
def no_gc():
    """Python's cyclic garbage collector off: a collection runs in whichever thread crosses its allocation threshold, so with
    two runs taking turns, one run's garbage could be collected on the other's clock. Reference counting, which frees
    almost everything, still runs; the cycles wait for the next `gc.collect()`, between runs."""
    gc.disable()
    try: yield
    finally: gc.enable()

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
                         cbs=[DeviceCB('cpu'), MetricsCB(accuracy=MulticlassAccuracy(), train_metrics=False), ProgressCB(stream=out)])
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

VARIANTS = {'mtlearn': with_mtlearn, 'fastai': with_fastai, 'Lightning': with_lightning, 'hand loop (A/A)': hand}
PEERS = ('fastai', 'Lightning')

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
          f'{epochs} epochs on {len(dd["train"]):,} images; {reps} repetitions, each variant against the hand loop batch by batch; bars drawn to a pseudo-terminal')
    goals = []
    for name in models:
        make, bs, lr = MODELS[name]
        dls = DataLoaders.from_dd_tensors(dd, bs, mean=0.28, std=0.35, flat=name == 'mlp')
        warm = DataLoaders.from_dd_tensors({k: v.select(range(2 * bs)) for k, v in dd.items()}, bs, mean=0.28, std=0.35, flat=name == 'mlp')
        n_batches = epochs * (len(dls.train) + len(dls.valid))
        pairs = {v: [] for v in VARIANTS}  # (hand loop s, variant s) per repetition
        def race(f, dls_, r, ep, g=hand):
            gc.collect()
            with term as out, no_gc():
                return crossover(lambda m, d: g(m, d, ep, lr, out), lambda m, d: f(m, d, ep, lr, out), make, dls_, r)
        for f in VARIANTS.values(): race(f, warm, 0, 1)  # one-time costs (imports, first calls), paid by neither side
        names = list(VARIANTS) + [f'{p} vs mtlearn' for p in PEERS]
        heads = {f'{p} vs mtlearn': p for p in PEERS}  # (mtlearn s, peer s) per repetition, the two against each other
        pairs.update({h: [] for h in heads})
        for r in range(reps):
            for v in names[r % len(names):] + names[:r % len(names)]:
                pairs[v].append(race(VARIANTS[heads[v]], dls, r, epochs, with_mtlearn) if v in heads else race(VARIANTS[v], dls, r, epochs))
        med, aa = statistics.median, pairs['hand loop (A/A)']
        print(f"\n{name} (batch {bs}, {n_batches} batches per run)")
        print(f"{'':<18}{'paired: hand loop s':>20}{'variant s':>11}{'ratio':>8}{'µs/batch':>10}   {'pair total: variant s':>22}{'ratio':>8}{'µs/batch':>10}")
        ratio, over = {}, {}
        for v, ps in ((v, ps) for v, ps in pairs.items() if v not in heads):
            hand_s = [(a2 + b2) / 2 for a2, b2 in aa]  # the hand loop's seconds in each repetition, from its A/A pair
            total = [a + b - h for (a, b), h in zip(ps, hand_s)]  # the variant's seconds, with whatever it cost its partner
            ratio[v], over[v] = med(b / a for a, b in ps), med((t - h) / n_batches * 1e6 for t, h in zip(total, hand_s))
            print(f'{v:<18}{med(a for a, _ in ps):>20.2f}{med(b for _, b in ps):>11.2f}{ratio[v]:>8.3f}{med((b - a) / n_batches * 1e6 for a, b in ps):>10.0f}'
                  f'   {med(total):>22.2f}{med(t / h for t, h in zip(total, hand_s)):>8.3f}{over[v]:>10.0f}', flush=True)
        limit = {'cnn': 1.02, 'mlp': 1.05}[name]
        goals.append(f"GOAL peers_{name}_mtlearn_vs_hand_loop {ratio['mtlearn']:.3f} <= {limit} {'PASS' if ratio['mtlearn'] <= limit else 'MISS'} (paired; A/A {ratio['hand loop (A/A)']:.3f})")
        print(f"{'head to head':<18}{'mtlearn s':>20}{'peer s':>11}{'ratio':>8}{'µs/batch':>10}   (the peer against mtlearn, no hand loop: the peer's extra time per batch)")
        extra = {}
        for h, p in heads.items():
            extra[p] = med((b - a) / n_batches * 1e6 for a, b in pairs[h])
            print(f'{h:<18}{med(a for a, _ in pairs[h]):>20.2f}{med(b for _, b in pairs[h]):>11.2f}{med(b / a for a, b in pairs[h]):>8.3f}{extra[p]:>10.0f}', flush=True)
        lowest = all(x >= 0 for x in extra.values())
        goals.append(f"GOAL peers_{name}_mtlearn_overhead_lowest {min(extra.values()):.0f} >= 0 µs/batch {'PASS' if lowest else 'MISS'} "
                     f"(head to head, the peers' extra time over mtlearn: {', '.join(f'{p} {x:.0f}' for p, x in extra.items())}; pair total: mtlearn {over['mtlearn']:.0f}, "
                     f"{', '.join(f'{p} {over[p]:.0f}' for p in PEERS)})")
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
