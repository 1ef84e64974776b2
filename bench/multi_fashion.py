"""Multi-Fashion at full size: every method of `mf_methods()` trained for --epochs, test accuracy of each side after every epoch.

Prints one JSON line per method and epoch (as it goes), then a table: the last epoch's accuracies, the best epoch by
mean accuracy, and seconds per epoch. LeNet-style shared encoder, two linear heads, Adam 1e-3, batch 256, seed 0.

    python bench/multi_fashion.py [--epochs 10] [--threads 1] [--methods Mean SDMGrad ...] [--n_train 120000 --n_test 20000]
    [--sdm_batches split|consecutive] [--quick]

It measures accuracies for the notebook's table and has no speed goal, so it prints no GOAL line.
"""
import argparse, json, time
import torch
from mtlearn.learner import Callback, MetricsCB
from mtlearn.datasets import DataLoaders
from mtlearn.multitask import load_multi_fashion, mf_methods, mf_learner, MF_LABELS

def main(epochs=10, methods=None, bs=256, n_train=120_000, n_test=20_000, sdm_batches='split'):
    t = time.time()
    dls = DataLoaders.from_dd_tensors(load_multi_fashion(n_train=n_train, n_test=n_test), bs, y=MF_LABELS, mean=0.275, std=0.363)
    print(f'Multi-Fashion built in {time.time() - t:.0f} s; {torch.get_num_threads()} thread(s)', flush=True)
    rows = []
    for name, agg, mode in mf_methods():
        if methods and not name.startswith(tuple(methods)): continue
        if name == 'SDMGrad' and sdm_batches != 'split': name = f'SDMGrad {sdm_batches}'
        hist = []
        class Log(Callback):
            order = MetricsCB.order + 1
            def after_epoch(self, learn, name=name):
                if learn.training: return
                h = learn.history[-1]
                hist.append((h['valid_acc_left'], h['valid_acc_right']))
                print(json.dumps({'method': name, 'epoch': h['epoch'], 'acc_left': hist[-1][0], 'acc_right': hist[-1][1],
                                  'time': round(time.time() - t0, 1)}), flush=True)
        learn = mf_learner(dls, agg, mode, cbs=[Log()], **({'sdm_batches': sdm_batches} if name.startswith('SDMGrad') else {}))
        learn.logging = False
        t0 = time.time()
        learn.fit(epochs)
        best = max(range(len(hist)), key=lambda i: sum(hist[i]))
        rows.append((name, *hist[-1], best + 1, *hist[best], (time.time() - t0) / epochs))
    print(f"\n{'method':<20}{'left':>7}{'right':>7}{'best epoch':>12}{'left':>7}{'right':>7}{'s/epoch':>9}   ({epochs} epochs)")
    for r in rows: print(f'{r[0]:<20}{r[1]:7.3f}{r[2]:7.3f}{r[3]:12d}{r[4]:7.3f}{r[5]:7.3f}{r[6]:9.1f}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    p.add_argument('--methods', nargs='*', help='only the methods whose names start with these')
    p.add_argument('--n_train', type=int, default=120_000)
    p.add_argument('--n_test', type=int, default=20_000)
    p.add_argument('--sdm_batches', default='split', choices=('split', 'consecutive'), help="SDMGrad's batches (MultiTaskGradCB)")
    p.add_argument('--quick', action='store_true', help='1 epoch on 12,000 training and 2,000 test pairs')
    a = p.parse_args()
    if a.quick: a.epochs, a.n_train, a.n_test = 1, 12_000, 2_000
    if a.threads: torch.set_num_threads(a.threads)
    main(a.epochs, a.methods, n_train=a.n_train, n_test=a.n_test, sdm_batches=a.sdm_batches)
