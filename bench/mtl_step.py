"""Seconds per multi-task training step, every variant in one run, as ratios to an ordinary step.

A LeNet-style shared conv encoder (36×36 grey images, as Multi-Fashion) with one linear head per task, batch 256,
cross-entropy per task, SGD; each variant trains through a `TrainLearner` on the same batch:
  (a) ordinary backward of the summed loss (no multi-task callback)
  (b) MultiTaskGradCB(Mean()), mode="params"
  (c) MultiTaskGradCB(MGDA()), mode="params"
  (d) MultiTaskGradCB(MGDA()), mode="features"
  (e) torchjd 0.18.0: mtl_backward + jac_to_grad with its MGDA, in a callback that replaces the backward pass
  (f) a hand-written loop calling mtlearn's functional core, `mtl_backward(losses, z, MGDA())`, as (c) without the Learner
Times are the median over --reps of the mean step time of a fit of --steps steps (after one warm-up fit); the variants
run interleaved, rep by rep, so that drifts of the machine hit them all.

    python bench/mtl_step.py [--ms 2,5,10] [--steps 10] [--reps 5] [--device cpu|cuda] [--quick]
"""
import argparse, statistics, time
import torch
import torch.nn.functional as F
from torch import nn
from mtlearn.learner import TrainLearner, Callback, DeviceCB
from mtlearn.datasets import DataLoaders
from mtlearn.aggregators import Mean, MGDA
from mtlearn.multitask import MultiTaskModel, MultiTaskLoss, MultiTaskGradCB, lenet_encoder, mtl_backward

def lenet_mtl(m): return MultiTaskModel(lenet_encoder(), [nn.Linear(50, 10) for _ in range(m)])

class TorchJDCB(Callback):
    "torchjd's multi-task backward in place of the Learner's."
    order = MultiTaskGradCB.order
    def __init__(self):
        from torchjd.aggregation import MGDA as JDMGDA
        self.agg = JDMGDA()
    def before_fit(self, learn):
        self.h = learn.model.encoder.register_forward_hook(lambda mod, i, o: setattr(self, 'z', o))
        self.shared = list(learn.model.encoder.parameters())
    def after_fit(self, learn): self.h.remove()
    replaces = ('backward',)  # the fit's backward pass is this one
    def backward(self, learn):
        from torchjd.autojac import mtl_backward, jac_to_grad
        lf = learn.loss_func  # torchjd wants separate scalar losses, not the entries of one stacked vector
        losses = [f(p, y) for f, p, y in zip(lf.loss_funcs, lf.split_preds(learn.preds), lf.split_targets(learn.yb))]
        mtl_backward(losses, features=self.z)
        jac_to_grad(self.shared, self.agg)

class HandLoop:
    "(f): the training loop written out, with the functional core for the backward pass; `fit` as the Learner's, for the timer."
    def __init__(self, model, dls, loss_func, lr, cbs):
        self.model, self.dl, self.loss_func = model, dls.train, loss_func
        self.dev = cbs[0].device
        self.opt = torch.optim.SGD(model.parameters(), lr)
        self.agg, self.shared, self.heads = MGDA(), list(model.encoder.parameters()), list(model.heads.parameters())
    def fit(self, n, valid=False):
        self.model.to(self.dev).train()
        for _ in range(n):
            for x, *ys in self.dl:
                x, ys = x.to(self.dev), [y.to(self.dev) for y in ys]
                z = self.model.encoder(x)
                losses = self.loss_func(tuple(h(z) for h in self.model.heads), *ys)
                mtl_backward(losses, z, self.agg, self.shared, self.heads)
                self.opt.step()
                self.opt.zero_grad()

def variants():
    return {'(a) ordinary': lambda: [], '(b) Mean, params': lambda: [MultiTaskGradCB(Mean())],
            '(c) MGDA, params': lambda: [MultiTaskGradCB(MGDA())], '(d) MGDA, features': lambda: [MultiTaskGradCB(MGDA(), mode='features')],
            '(e) torchjd MGDA': lambda: [TorchJDCB()], '(f) hand loop, MGDA': lambda: []}

def main(ms=(2, 5, 10), steps=10, reps=5, device='cpu', bs=256):
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, batch {bs}, {steps} steps per fit, median of {reps}")
    results = {}
    for m in ms:
        torch.manual_seed(0)
        batch = (torch.randn(bs, 1, 36, 36), *[torch.randint(0, 10, (bs,)) for _ in range(m)])
        dls = DataLoaders([batch] * steps, [])
        learns = {}
        for name, cbs in variants().items():
            torch.manual_seed(0)
            make = HandLoop if name.startswith('(f)') else TrainLearner
            learns[name] = make(lenet_mtl(m), dls, MultiTaskLoss(*[F.cross_entropy] * m), lr=0.01, cbs=[DeviceCB(device)] + cbs())
            learns[name].fit(1, valid=False)  # warm-up
        times = {k: [] for k in learns}
        for _ in range(reps):
            for name, learn in learns.items():
                if device == 'cuda': torch.cuda.synchronize()
                t = time.perf_counter()
                learn.fit(1, valid=False)
                if device == 'cuda': torch.cuda.synchronize()
                times[name].append((time.perf_counter() - t) / steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[m] = med
        base = med['(a) ordinary']
        print(f"\n== m = {m} tasks")
        for k, v in med.items(): print(f"{k:<22}{v * 1000:9.1f} ms{v / base:8.2f}×")
    print()
    for m, med in results.items():
        a = med['(a) ordinary']
        if m in (2, 10):
            goal = 1.3 if m == 2 else 1.6
            r = med['(d) MGDA, features'] / a
            print(f"GOAL mtl_features_step_ratio_m{m} {r:.2f} <= {goal} {'PASS' if r <= goal else 'MISS'}")  # (d)/(a)
        r = med['(c) MGDA, params'] / med['(e) torchjd MGDA']
        print(f"GOAL mtl_params_vs_torchjd_m{m} {r:.2f} <= 1.0 {'PASS' if r <= 1 else 'MISS'}")  # (c)/(e)
        r = med['(c) MGDA, params'] / med['(f) hand loop, MGDA']
        print(f"GOAL mtl_learner_vs_hand_loop_m{m} {r:.3f} <= 1.03 {'PASS' if r <= 1.03 else 'MISS'}")  # (c)/(f)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--ms', default='2,5,10')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--device', default='cpu')
    p.add_argument('--quick', action='store_true', help='m = 2 and 10, 5 steps, 3 repetitions')
    a = p.parse_args()
    if a.quick: a.ms, a.steps, a.reps = '2,10', 5, 3
    main(tuple(int(x) for x in a.ms.split(',')), a.steps, a.reps, a.device)
