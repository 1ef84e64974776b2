"""The course's Fashion-MNIST accuracy table (fast.ai part 2, 2022, notebooks 12-13) reproduced with mtlearn, and the
one-cycle row timed against a hand-written PyTorch loop.

Each row trains on the full Fashion-MNIST (batch size 1024, inputs normalised with mean 0.28 and std 0.35) and prints
the course's last-epoch validation accuracy, mtlearn's, the floor the row must reach, and the seconds it took.
The CNN is `get_model(act_gr, norm=nn.BatchNorm2d)` with leaky Kaiming init, as in the course.

    python bench/course_table.py                # every row with seed 42, then the overhead timing
    python bench/course_table.py --rows cnn --seeds 0 1 2   # the small-CNN rows, three seeds each (about 8 minutes)
    python bench/course_table.py --rows overhead --reps 3
"""
import argparse, io, statistics, time
from functools import partial
import fastcore.all as fc
import torch, torch.nn.functional as F
from torch import nn, optim
from torch.optim import lr_scheduler
from torcheval.metrics import MulticlassAccuracy
from mtlearn.all import *
from learner_overhead import hand_loop as plain_loop  # bench/ is on sys.path when this script runs

iw = partial(init_weights, leaky=0.1)
def cnn(): return get_model(act_gr, norm=nn.BatchNorm2d).apply(iw)

def fit(model, dls, epochs, lr, opt_func, extra=(), one_cycle=False, loss_func=F.cross_entropy):
    "Train like the course's notebooks do and return the last epoch's validation accuracy."
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    learn = TrainLearner(model, dls, loss_func, lr=lr, opt_func=opt_func,
                         cbs=[DeviceCB(), metrics, ProgressCB(stream=io.StringIO())] + list(extra))
    if one_cycle: learn.fit_one_cycle(epochs, lr)
    else: learn.fit(epochs)
    return metrics.all_metrics['accuracy'].compute().item()

def cosine(per_batch, dls, epochs):
    if per_batch: return [BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=epochs*len(dls.train)))]
    return [EpochSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=epochs))]

# (group, recipe, epochs, course, floor, run(dls, epochs) -> accuracy)
ROWS = [
    ('cnn', 'hand-written SGD lr 0.4', 3, 0.852, 0.84, lambda d, e: fit(cnn(), d, e, 0.4, SGD)),
    ('cnn', 'hand-written Momentum lr 1.5', 3, 0.876, 0.86, lambda d, e: fit(cnn(), d, e, 1.5, Momentum)),
    ('cnn', 'hand-written RMSProp lr 3e-3', 3, 0.853, 0.84, lambda d, e: fit(cnn(), d, e, 3e-3, RMSProp)),
    ('cnn', 'hand-written Adam lr 6e-3', 3, 0.871, 0.86, lambda d, e: fit(cnn(), d, e, 6e-3, Adam)),
    ('cnn', 'AdamW 2e-2 + cosine (BatchSchedCB)', 3, 0.883, 0.87, lambda d, e: fit(cnn(), d, e, 2e-2, optim.AdamW, cosine(True, d, e))),
    ('cnn', 'AdamW 2e-2 + cosine (EpochSchedCB)', 3, 0.887, 0.87, lambda d, e: fit(cnn(), d, e, 2e-2, optim.AdamW, cosine(False, d, e))),
    ('cnn', 'AdamW + OneCycleLR max_lr 6e-2', 5, 0.906, 0.895, lambda d, e: fit(cnn(), d, e, 6e-2, optim.AdamW, one_cycle=True)),
    ('resnet', 'ResNet 8..256 + OneCycle 2e-2', 5, 0.928, 0.92,
     lambda d, e: fit(get_resnet().apply(iw), d, e, 2e-2, optim.AdamW, one_cycle=True)),
]
# Beyond the course: the same ResNet with batch size 128 (eight times the steps), a one-cycle peak of 1e-2 and label
# smoothing 0.1. (Trials, seed 42: batch size 256 gave 0.929 with or without smoothing, and a horizontal-flip TTA on top
# lowered that to 0.918; batch size 64 gave 0.929; batch size 128 with a peak of 2e-2 gave 0.933.)
RECIPE_BS = 128
RECIPE = ('recipe', 'ResNet 8..256, bs 128, 1e-2, smoothing 0.1', 5, None, 0.935,
          lambda d, e: fit(get_resnet().apply(iw), d, e, 1e-2, optim.AdamW, one_cycle=True,
                           loss_func=partial(F.cross_entropy, label_smoothing=0.1)))

def hand_loop(model, dls, epochs, lr):
    "The one-cycle row without mtlearn: AdamW, OneCycleLR with fit_one_cycle's warm-up share, loss and accuracy per epoch."
    return plain_loop(model, dls, epochs, lr, io.StringIO(), pct_start=0.25)

def with_callbacks(model, dls, epochs, lr):
    "The same row through mtlearn, with ActivationStats, ProgressCB, MetricsCB and (in fit_one_cycle) RecorderCB."
    astats = ActivationStats(fc.risinstance(GeneralRelu))
    return fit(model, dls, epochs, lr, optim.AdamW, [astats], one_cycle=True)

def overhead(dls, reps):
    variants = [('hand loop', hand_loop), ('mtlearn', with_callbacks), ('hand loop again', hand_loop)]
    small = DataLoaders.from_dd_tensors({k: v.select(range(2048)) for k, v in load_fashion_mnist().items()}, 1024)
    for _, f in variants[:2]: f(cnn(), small, 1, 6e-2)  # one-time costs (lazy imports, allocator) paid by neither
    times = {k: [] for k, _ in variants}
    for r in range(reps):
        for k, f in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order so that drift hits all alike
            set_seed(r)
            model = cnn()
            t = time.perf_counter()
            f(model, dls, 5, 6e-2)
            times[k].append(time.perf_counter()-t)
    base = [(a+b)/2 for a, b in zip(times['hand loop'], times['hand loop again'])]
    ratio = statistics.median(l/b for l, b in zip(times['mtlearn'], base))
    aa = statistics.median(a/b for a, b in zip(times['hand loop again'], times['hand loop']))
    print(f'\nOne-cycle row (5 epochs), {reps} repetitions; times are medians in seconds')
    print(f"{'hand loop':>10}{'mtlearn':>10}{'hand again':>12}{'ratio':>8}{'A/A':>8}")
    print(f"{statistics.median(times['hand loop']):>10.1f}{statistics.median(times['mtlearn']):>10.1f}"
          f"{statistics.median(times['hand loop again']):>12.1f}{ratio:>8.3f}{aa:>8.3f}")
    print('ratio: mtlearn (ActivationStats + ProgressCB + MetricsCB + RecorderCB) / mean of the two hand-loop runs of the'
          ' same repetition; A/A: hand loop again / hand loop (machine noise)')
    print(f"GOAL course_overhead_ratio {ratio:.3f} <= 1.1 {'PASS' if ratio <= 1.1 else 'MISS'}")

def main(rows='all', reps=3, seeds=(42,)):
    torch.set_num_threads(2)
    dls = DataLoaders.from_dd_tensors(load_fashion_mnist(), 1024, mean=0.28, std=0.35)
    todo = [r for r in ROWS + [RECIPE] if rows == 'all' or r[0] == rows]
    if todo:
        print(f'seeds {", ".join(map(str, seeds))}; mtlearn: mean over the seeds (min, max); seconds: mean per run')
        print(f"{'recipe':<44}{'epochs':>7}{'course':>8}{'mtlearn':>9}{'min':>7}{'max':>7}{'floor':>7}{'seconds':>9}")
    for group, name, epochs, course, floor, run in todo:
        d = dls if group != 'recipe' else DataLoaders.from_dd_tensors(load_fashion_mnist(), RECIPE_BS, mean=0.28, std=0.35)
        accs, secs = [], []
        for seed in seeds:
            set_seed(seed)
            t = time.perf_counter()
            accs.append(run(d, epochs))
            secs.append(time.perf_counter() - t)
        acc = statistics.mean(accs)
        c = f'{course:.3f}' if course else '-'
        print(f"{name:<44}{epochs:>7}{c:>8}{acc:>9.4f}{min(accs):>7.4f}{max(accs):>7.4f}{floor:>7.3f}{statistics.mean(secs):>9.0f}"
              f"  {'PASS' if acc >= floor else 'MISS'}", flush=True)
    if rows in ('all', 'overhead'): overhead(dls, reps)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rows', default='all', choices=['all', 'cnn', 'resnet', 'recipe', 'overhead'])
    p.add_argument('--reps', type=int, default=3, help='repetitions of the overhead timing')
    p.add_argument('--seeds', type=int, nargs='+', default=[42], help='train each row once per seed')
    a = p.parse_args()
    main(a.rows, a.reps, a.seeds)
