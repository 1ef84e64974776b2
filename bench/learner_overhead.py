"""Time of the same training run as a hand-written PyTorch loop and as mtlearn's `TrainLearner` with
DeviceCB + MetricsCB + ProgressCB + a one-cycle BatchSchedCB, side by side in one run.
Same model, tensor-backed Fashion-MNIST data, AdamW and OneCycleLR; both compute training and validation
loss and accuracy each epoch. After a warm-up, the variants run back to back in alternating order, several times; the hand loop runs twice\nper repetition, the second time as an A/A control that shows how noisy the machine is.

    python bench/learner_overhead.py [--quick]
"""
import argparse, io, statistics, time
from functools import partial
import torch, torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy
from mtlearn.datasets import load_fashion_mnist, DataLoaders
from mtlearn.learner import TrainLearner, DeviceCB, MetricsCB, ProgressCB
from mtlearn.sgd import BatchSchedCB
from mtlearn.cli import simple_cnn

def mlp(): return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))

def hand_loop(model, dls, epochs, lr, out, pct_start=0.3):
    "AdamW with OneCycleLR, loss and accuracy on the device, one line per epoch and phase to `out`; returns the last accuracy."
    opt = optim.AdamW(model.parameters(), lr)
    sched = optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs*len(dls.train), pct_start=pct_start)
    for epoch in range(epochs):
        for training, dl in ((True, dls.train), (False, dls.valid)):
            model.train(training)
            loss_sum, correct, n = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
            with torch.set_grad_enabled(training):
                for xb, yb in dl:
                    preds = model(xb)
                    loss = F.cross_entropy(preds, yb)
                    if training:
                        loss.backward()
                        opt.step()
                        sched.step()
                        opt.zero_grad()
                    loss_sum += loss.detach()*len(xb)
                    correct += (preds.argmax(1) == yb).sum()
                    n += len(xb)
            acc = (correct/n).item()
            print(f'{acc:.3f} {(loss_sum/n).item():.3f} {epoch} {"train" if training else "eval"}', file=out)
    return acc

def learner(model, dls, epochs, lr, out):
    sched = partial(optim.lr_scheduler.OneCycleLR, max_lr=lr, total_steps=epochs*len(dls.train))
    cbs = [DeviceCB('cpu'), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(stream=out), BatchSchedCB(sched)]
    TrainLearner(model, dls, F.cross_entropy, lr=lr, cbs=cbs, opt_func=optim.AdamW).fit(epochs)

def main(quick=False):
    torch.set_num_threads(2)
    dd = load_fashion_mnist()
    if quick: dd = {k: v.select(range(n)) for (k, v), n in zip(dd.items(), (10000, 2000))}
    epochs, reps = (1, 3) if quick else (5, 5)
    # The hand loop runs twice per repetition: its second copy is an A/A control that shows the machine's noise.
    variants = [('hand loop', hand_loop), ('TrainLearner', learner), ('hand loop again', hand_loop)]
    rows = []
    for name, make, flat, bs in (('cnn', simple_cnn, False, 256), ('mlp', mlp, True, 1024)):
        dls = DataLoaders.from_dd_tensors(dd, bs, mean=0.28, std=0.35, flat=flat)
        warm = DataLoaders.from_dd_tensors({k: v.select(range(512)) for k, v in dd.items()}, bs, flat=flat)
        for _, f in variants[:2]: f(make(), warm, 1, 1e-2, io.StringIO())  # one-time costs (lazy imports, allocator) paid by neither
        times = {k: [] for k, _ in variants}
        for r in range(reps):
            for k, f in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order: drift hits all alike
                torch.manual_seed(r)
                model, out = make(), io.StringIO()
                t = time.perf_counter()
                f(model, dls, epochs, 1e-2, out)
                times[k].append(time.perf_counter()-t)
        # each repetition's variants ran back to back: the median of their ratios is steadier than a ratio of medians;
        # the baseline of a repetition is the mean of its two hand-loop runs
        base = [(a+b)/2 for a, b in zip(times['hand loop'], times['hand loop again'])]
        ratio = statistics.median(l/b for l, b in zip(times['TrainLearner'], base))
        aa = statistics.median(a/b for a, b in zip(times['hand loop again'], times['hand loop']))
        rows.append((name, bs, *(statistics.median(times[k]) for k, _ in variants), ratio, aa))
    print(f'{epochs} epoch(s) of {len(dd["train"]):,} images (and validation), {reps} repetitions, 2 threads; times are medians,')
    print('ratio: median over repetitions of TrainLearner / mean of the two hand-loop runs; A/A: hand loop again / hand loop (noise)')
    print(f"{'model':<6}{'bs':>6}{'hand loop s':>13}{'TrainLearner s':>16}{'hand again s':>14}{'ratio':>8}{'A/A':>8}")
    for name, bs, a, b, c, r, aa in rows: print(f'{name:<6}{bs:>6}{a:>13.2f}{b:>16.2f}{c:>14.2f}{r:>8.3f}{aa:>8.3f}')
    for name, bs, a, b, c, r, aa in rows:
        print(f"GOAL learner_overhead_ratio_{name} {r:.3f} <= 1.05 {'PASS' if r <= 1.05 else 'MISS'}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='1 epoch on a 10,000-image subset')
    main(p.parse_args().quick)
