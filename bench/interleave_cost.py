"""What interleaving two training runs batch by batch (learner_overhead.lockstep) does to the cost of small operations:
the time of one call of ActivationStats' hook (the statistics of one of the course CNN's four activation layers), inside a
lone run of the course's one-cycle row and inside the same run interleaved with the hand-written loop, at 2 threads and at 1.

Each thread that calls into PyTorch gets its own OpenMP team, so two interleaved runs keep two teams, and more OpenMP
threads than the machine has cores. If the hook costs more interleaved than alone at 2 threads but not at 1, interleaving
bills small parallel operations more than a user's lone run does.

    python bench/interleave_cost.py [--reps 2] [--n_train 60000]
"""
import argparse, statistics, time
from functools import partial
import fastcore.all as fc
import torch
from torch import optim
from mtlearn.all import *
from learner_overhead import lockstep, steady_malloc  # bench/ is on sys.path when this script runs
from course_table import cnn, fit, hand_loop

def timed_astats(spent):
    "ActivationStats whose hook adds its seconds and calls to `spent`."
    astats = ActivationStats(fc.risinstance(GeneralRelu))
    stats = astats.hookfunc
    def hook(*args):
        t = time.perf_counter()
        stats(*args)
        spent[0] += time.perf_counter() - t; spent[1] += 1
    astats.hookfunc = hook
    return astats

def hook_us(dls, interleaved, seed):
    "µs per call of the hook in one epoch of the row through mtlearn, alone or interleaved with the hand loop."
    spent = [0., 0]
    learn = lambda m, d: fit(m, d, 1, 6e-2, optim.AdamW, [timed_astats(spent)], one_cycle=True)
    torch.manual_seed(seed)
    if interleaved: lockstep(partial(hand_loop, epochs=1, lr=6e-2), learn, [cnn(), cnn()], dls, first=seed % 2)
    else: learn(cnn(), dls)
    return spent[0] / spent[1] * 1e6

def main(reps=2, n_train=60_000):
    steady_malloc()
    dd = load_fashion_mnist()
    if n_train < len(dd['train']): dd['train'] = dd['train'].select(range(n_train))
    dls = DataLoaders.from_dd_tensors(dd, 1024, mean=0.28, std=0.35)
    hook_us(dls, True, 0)  # one-time costs
    print(f'µs per call of the ActivationStats hook, one epoch on {len(dd["train"]):,} images (batch 1024); medians of {reps} runs, alone and interleaved alternating')
    print(f"{'threads':>8}{'alone':>8}{'interleaved':>13}{'ratio':>8}")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        us = {k: [] for k in (False, True)}
        for r in range(reps):
            for k in ((False, True) if r % 2 == 0 else (True, False)): us[k].append(hook_us(dls, k, r))
        a, i = statistics.median(us[False]), statistics.median(us[True])
        print(f'{threads:>8}{a:>8.0f}{i:>13.0f}{i / a:>8.2f}', flush=True)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=2)
    p.add_argument('--n_train', type=int, default=60_000)
    a = p.parse_args()
    main(a.reps, a.n_train)
