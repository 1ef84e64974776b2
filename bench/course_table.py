"""The course's Fashion-MNIST accuracy table (fast.ai part 2, 2022, notebooks 12-13) reproduced with mtlearn, and the
one-cycle row timed against a hand-written PyTorch loop, the two runs interleaved batch by batch.

Each row trains on the full Fashion-MNIST (batch size 1024, inputs normalised with mean 0.28 and std 0.35) and prints
the course's last-epoch validation accuracy, mtlearn's, the floor the row must reach, and the seconds it took.
The CNN is `get_model(act_gr, norm=nn.BatchNorm2d)` with leaky Kaiming init, as in the course.

    python bench/course_table.py                # every row with seed 42, then the overhead timing
    python bench/course_table.py --rows cnn --seeds 0 1 2   # the small-CNN rows, three seeds each (about 8 minutes)
    python bench/course_table.py --rows overhead --reps 5
    python bench/course_table.py --quick        # the small-CNN rows and one repetition of the overhead timing (5 minutes)
    python bench/course_table.py --rows augment # the course's 20-epoch augmented ResNet (for a GPU: hours on 2 CPU cores)
    python bench/course_table.py --rows augment --dry-run   # one epoch on 2,048 images, to check that it runs

Every row's floor is a goal (`GOAL course_<row> <accuracy> >= <floor>`), and so is the overhead ratio. `--quick` leaves
out the ResNet rows and the recipe, whose accuracy cannot be measured in less than their full five epochs.
"""
import argparse, io, re, statistics, time
from functools import partial
import fastcore.all as fc
import torch, torch.nn.functional as F
from torch import nn, optim
from torch.optim import lr_scheduler
from torcheval.metrics import MulticlassAccuracy
from mtlearn.all import *
from learner_overhead import hand_loop as plain_loop, crossover, in_turn, steady_malloc  # bench/ is on sys.path when this script runs

iw = partial(init_weights, leaky=0.1)
# bias='auto': no conv bias before a batch norm, which cancels it (the course's `conv` keeps one). The network computes
# the same function either way; only the random stream of the initialisation differs. The floors were set with it, and
# 3 epochs on one seed move with that stream: hand-written SGD read 0.830, 0.826, 0.851, 0.851 (seeds 42, 0, 1, 2) with
# the course's bias, 0.856, 0.854, 0.846, 0.845 without (RMSProp: 0.838, 0.827, 0.859, 0.846 against 0.860, 0.860,
# 0.853, 0.854); measured 2026-12-07 on the development machine.
def cnn(): return get_model(act_gr, norm=nn.BatchNorm2d, bias='auto').apply(iw)

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
# Beyond the course: the ResNet at twice the channels (16..512, four times the multiply-adds), batch size 128 (eight
# times the steps), a one-cycle peak of 1e-2 and label smoothing 0.1. (Trials, seed 42: batch size 256 gave 0.929 with or
# without smoothing, and a horizontal-flip TTA on top lowered that to 0.918; batch size 64 gave 0.929; batch size 128 with
# a peak of 2e-2 gave 0.933; channels 8..256 at batch size 128 gave 0.9346. Trained on the first 50,000 training images
# and scored on the last 10,000, channels 8..256 gave 0.9372, weight decay 0.1 0.9350, no smoothing 0.9360, a moving
# average of the weights 0.9343, one-pixel-shift TTA 0.9363, channels 12..384 0.9376 (0.9349 on the test set), zero-init
# of each block's last BatchNorm 0.9348, random flips in training with flip TTA 0.9360, a peak of 5e-3 0.9302, a second
# block at 14 and 7 pixels 0.9347, channels 16..512 0.9385 (0.9401 on the test set): see nbs/12_sgd.ipynb.)
# The course's 20-epoch run of notebook 14 (augment): its ResNet 16..512 (a 5×5 first block), random crops (1-pixel pad)
# and flips of the training batches, AdamW with a one-cycle peak of 1e-2; the course reached 0.943. GPU-sized: 20 epochs.
def aug_resnet():
    nfs = (16, 32, 64, 128, 256, 512)
    layers = [ResBlock(1, 16, ks=5, stride=1, act=act_gr, norm=nn.BatchNorm2d)]
    layers += [ResBlock(nfs[i], nfs[i+1], act=act_gr, norm=nn.BatchNorm2d, stride=2) for i in range(len(nfs) - 1)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(nfs[-1], 10, bias=False), nn.BatchNorm1d(10)).apply(iw)
def augment(): return [BatchTransformCB(partial(lambda b, t: (t(b[0]), *b[1:]), t=nn.Sequential(RandCrop(1), RandFlip())), on_val=False)]
AUGMENT = ('augment', 'ResNet 16..512 + crop/flip, 20 epochs', 20, 0.943, 0.945,
           lambda d, e: fit(aug_resnet(), d, e, 1e-2, optim.AdamW, extra=augment(), one_cycle=True))

RECIPE_BS = 128
RECIPE = ('recipe', 'ResNet 16..512, bs 128, 1e-2, smoothing 0.1', 5, None, 0.935,
          lambda d, e: fit(get_resnet(nfs=(16, 32, 64, 128, 256, 512)).apply(iw), d, e, 1e-2, optim.AdamW, one_cycle=True,
                           loss_func=partial(F.cross_entropy, label_smoothing=0.1)))

def hand_loop(model, dls, epochs, lr):
    "The one-cycle row without mtlearn: AdamW, OneCycleLR with fit_one_cycle's warm-up share, loss and accuracy per epoch."
    return plain_loop(model, dls, epochs, lr, io.StringIO(), pct_start=0.25)

def with_callbacks(model, dls, epochs, lr):
    "The same row through mtlearn, with ActivationStats, ProgressCB, MetricsCB and (in fit_one_cycle) RecorderCB."
    astats = ActivationStats(fc.risinstance(GeneralRelu))
    return fit(model, dls, epochs, lr, optim.AdamW, [astats], one_cycle=True)

def overhead(dls, reps):
    "The one-cycle row's seconds through mtlearn over the hand loop's, timed two ways; returns the medians (one after the other, interleaved)."
    small = DataLoaders.from_dd_tensors({k: v.select(range(2048)) for k, v in load_fashion_mnist().items()}, 1024)
    crossover(partial(hand_loop, epochs=1, lr=6e-2), partial(with_callbacks, epochs=1, lr=6e-2), cnn, small)  # one-time costs (lazy imports, allocator, threads) paid by neither
    ways = {'one after the other': lambda a, b, r: in_turn(a, b, cnn, dls, r, first=r % 2),
            'interleaved batch by batch': lambda a, b, r: crossover(a, b, cnn, dls, r)}
    pairs = {'mtlearn / hand loop': with_callbacks, 'A/A: hand loop again / hand loop': hand_loop}
    ratios = {(w, k): [] for w in ways for k in pairs}
    for r in range(reps):
        for w, time_pair in ways.items():
            for k, other in pairs.items():
                ta, tb = time_pair(partial(hand_loop, epochs=5, lr=6e-2), partial(other, epochs=5, lr=6e-2), r)
                ratios[w, k].append((ta, tb, tb / ta))
    print(f'\nOne-cycle row (5 epochs), {reps} repetitions, each the two runs from one initial model, timed two ways:')
    print('- one after the other in one thread (who goes first alternates): what a lone run sees; drift between the runs is not cancelled;')
    print('- interleaved batch by batch in two threads (own clock each), twice with the threads swapped (learner_overhead.crossover):')
    print('  cancels drift, but each thread then has its own OpenMP team, and small parallel ops cost more than in a lone run')
    print(f"{'':<28}{'':<34}{'hand loop s':>12}{'other s':>9}{'ratio':>8}   per repetition")
    for (w, k), v in ratios.items():
        med = lambda i: statistics.median(x[i] for x in v)
        print(f"{w:<28}{k:<34}{med(0):>12.1f}{med(1):>9.1f}{med(2):>8.3f}   {' '.join(f'{x[2]:.3f}' for x in v)}")
    print('mtlearn: ActivationStats + ProgressCB + MetricsCB + RecorderCB; ratios are medians over the repetitions;'
          ' A/A (the hand loop against itself) shows what noise is left')
    return tuple(statistics.median(x[2] for x in ratios[w, 'mtlearn / hand loop']) for w in ways)

def main(rows='all', reps=3, seeds=(42,), dry_run=False):
    steady_malloc()
    if not torch.cuda.is_available(): torch.set_num_threads(2)
    dd = load_fashion_mnist()
    if dry_run:  # the same code on 2,048 images for one epoch: checks that the rows run, measures nothing
        from datasets import DatasetDict
        dd = DatasetDict({k: v.select(range(2048)) for k, v in dd.items()})
    dls = DataLoaders.from_dd_tensors(dd, 1024, mean=0.28, std=0.35)
    todo = [r for r in ROWS + [RECIPE, AUGMENT] if (rows == 'all' and r[0] != 'augment') or r[0] == rows or (rows == 'quick' and r[0] == 'cnn')]
    if dry_run: todo = [(g, n, 1, c, f, run) for g, n, e, c, f, run in todo]
    if todo:
        print(f'seeds {", ".join(map(str, seeds))}; mtlearn: mean over the seeds (min, max); seconds: mean per run')
        print(f"{'recipe':<44}{'epochs':>7}{'course':>8}{'mtlearn':>9}{'min':>7}{'max':>7}{'floor':>7}{'seconds':>9}")
    goals = []
    for group, name, epochs, course, floor, run in todo:
        d = dls if group != 'recipe' else DataLoaders.from_dd_tensors(dd, RECIPE_BS, mean=0.28, std=0.35)
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
        goals.append((re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_'), acc, floor))
    ratio = overhead(dls, reps) if rows in ('all', 'overhead', 'quick') and not dry_run else None
    print()
    if dry_run:
        print('dry run: every row ran for one epoch on 2,048 images; no GOAL lines')
        return
    for slug, acc, floor in goals: print(f"GOAL course_{slug} {acc:.4f} >= {floor} {'PASS' if acc >= floor else 'MISS'}")
    if ratio is not None:
        lone, interleaved = ratio
        print(f"GOAL course_overhead_ratio {lone:.4f} <= 1.05 {'PASS' if lone <= 1.05 else 'MISS'} (one after the other; interleaved batch by batch: {interleaved:.4f})")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rows', default='all', choices=['all', 'cnn', 'resnet', 'recipe', 'augment', 'overhead'], help="'augment' (20 epochs, for a GPU) is not part of 'all'")
    p.add_argument('--dry-run', action='store_true', help='one epoch on 2,048 images: check that the rows run')
    p.add_argument('--reps', type=int, default=3, help='repetitions of the overhead timing')
    p.add_argument('--seeds', type=int, nargs='+', default=[42], help='train each row once per seed')
    p.add_argument('--quick', action='store_true', help='the small-CNN rows and one repetition of the overhead timing')
    a = p.parse_args()
    if a.quick: a.rows, a.reps = 'quick', 1
    main(a.rows, a.reps, a.seeds, a.dry_run)
