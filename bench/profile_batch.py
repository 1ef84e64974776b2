"""Where mtlearn's time per batch goes: a model so small (one linear layer, batch 64) that the framework is most of the
work, trained for one epoch by a hand-written loop and by `TrainLearner` with DeviceCB, MetricsCB, ProgressCB (its bar
drawn to a pseudo-terminal) and a one-cycle schedule, as bench/peers.py runs them; then the learner's epoch under
cProfile, its own functions' time per batch listed (cProfile's own cost included, so read them relative to each other).
`--astats` adds ActivationStats on the layer, `--train_metrics` the metrics' update on training batches.

    python bench/profile_batch.py [--astats] [--train_metrics] [--top 15]
"""
import argparse, cProfile, collections, os, pstats, statistics, sys, time
import torch, torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy
import mtlearn
from mtlearn.datasets import DataLoaders, load_fashion_mnist
from mtlearn.learner import TrainLearner, DeviceCB, MetricsCB, ProgressCB
from mtlearn.activations import ActivationStats
import mtlearn.sgd  # noqa: F401 (fit_one_cycle)
from peers import Terminal, hand  # bench/ is on sys.path when this script runs

def main(astats=False, train_metrics=False, top=15):
    torch.set_num_threads(1)
    dls = DataLoaders.from_dd_tensors(load_fashion_mnist(), 64, mean=0.28, std=0.35, flat=True)
    n = len(dls.train) + len(dls.valid)
    term = Terminal()
    def learner(model, dls, epochs, lr, out):
        cbs = [DeviceCB('cpu'), MetricsCB(accuracy=MulticlassAccuracy(), train_metrics=train_metrics), ProgressCB(stream=out)]
        if astats: cbs.append(ActivationStats(mods=[model[0]]))
        TrainLearner(model, dls, F.cross_entropy, lr=lr, opt_func=optim.AdamW, cbs=cbs).fit_one_cycle(epochs, lr)
    def run(f):
        torch.manual_seed(0)
        with term as out:
            t = time.perf_counter(); f(nn.Sequential(nn.Linear(784, 10)), dls, 1, 1e-2, out); return time.perf_counter() - t
    run(hand); run(learner)  # warm-up
    h, m = (statistics.median(run(f) for _ in range(3)) for f in (hand, learner))
    print(f'{n} batches (one epoch and validation), one thread; medians of 3 runs, one after the other')
    print(f'hand loop {h / n * 1e6:.0f} µs/batch, TrainLearner {m / n * 1e6:.0f} µs/batch: {(m - h) / n * 1e6:.0f} µs/batch more')
    pr = cProfile.Profile(); pr.enable(); run(learner); pr.disable()
    root, own = os.path.dirname(mtlearn.__file__), collections.Counter()
    for (fn, ln, name), (cc, nc, tt, ct, callers) in pstats.Stats(pr).stats.items():
        if fn.startswith(root): own[f'{os.path.relpath(fn, root)}:{ln} {name}'] += tt
    print(f"\nmtlearn's own code under cProfile: {sum(own.values()) / n * 1e6:.0f} µs/batch; the largest:")
    for k, v in own.most_common(top): print(f'{v / n * 1e6:8.1f} µs/batch  {k}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--astats', action='store_true')
    p.add_argument('--train_metrics', action='store_true')
    p.add_argument('--top', type=int, default=15)
    a = p.parse_args()
    main(a.astats, a.train_metrics, a.top)
