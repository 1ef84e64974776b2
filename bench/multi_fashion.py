"""Multi-Fashion: every multi-task method of mtlearn trained for the same budget, test accuracy of each side after every epoch.

The methods: the summed loss, every aggregator that takes two tasks (Krum and TrimmedMean need more rows than two
tasks give), through `MultiTaskGradCB`, and every loss weighting, through `LossWeightingCB` (--methods narrows it).

Prints one JSON line per method and epoch (as it goes), then a table: the last epoch's accuracies, the best epoch by
mean accuracy, and seconds per epoch. LeNet-style shared encoder, two linear heads, Adam 1e-3, batch 256, seed 0.

    python bench/multi_fashion.py [--epochs 10] [--threads 1] [--methods Mean SDMGrad ...] [--n_train 120000 --n_test 20000]
    [--sdm_batches split|consecutive] [--quick] [--plot tradeoff.png]

It measures accuracies for the notebook's table and has no speed goal, so it prints no GOAL line.
"""
import argparse, json, time
import torch
from mtlearn.learner import Callback, MetricsCB
from mtlearn.datasets import DataLoaders
from mtlearn.multitask import load_multi_fashion, mf_methods, mf_learner, MF_LABELS
import mtlearn.aggregators as A
import mtlearn.loss_weighting as W

def all_methods():
    "(name, aggregator or None, mode, extra callbacks): `mf_methods()` first, then the rest of the family."
    out = [(n, a, m, []) for n, a, m in mf_methods()]
    out += [(n, a, 'params', []) for n, a in [('DualProj', A.DualProj()), ('PCGrad', A.PCGrad()), ('IMTL-G', A.IMTLG()),
            ('Aligned-MTL', A.AlignedMTL()), ('CAGrad c=0.4', A.CAGrad(0.4)), ('Nash-MTL', A.NashMTL()), ('FairGrad a=1', A.FairGrad(1.)),
            ('ConFIG', A.ConFIG()), ('GradVac', A.GradVac()), ('GradDrop', A.GradDrop()), ('MoDo', A.MoDo()), ('ExcessMTL', A.ExcessMTL()),
            ('CR-MOGM(UPGrad)', A.CRMOGM(A.UPGrad())), ('DB-MTL', A.DBMTL()), ('Random (RLW on grads)', A.Random())]]
    out += [(f'loss: {n}', None, None, [W.LossWeightingCB(w)]) for n, w in [('UW', W.UW(2)), ('IMTL-L', W.IMTLL(2)), ('DWA', W.DWA()),
            ('RLW', W.RLW()), ('GLS', W.GLS()), ('STCH', W.STCH()), ('FAMO', W.FAMO(2)), ('GradNorm', W.GradNorm(2))]]
    return out

def main(epochs=10, methods=None, bs=256, n_train=120_000, n_test=20_000, sdm_batches='split', plot=None):
    t = time.time()
    dls = DataLoaders.from_dd_tensors(load_multi_fashion(n_train=n_train, n_test=n_test), bs, y=MF_LABELS, mean=0.275, std=0.363)
    print(f'Multi-Fashion built in {time.time() - t:.0f} s; {torch.get_num_threads()} thread(s)', flush=True)
    rows = []
    for name, agg, mode, extra in all_methods():
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
        learn = mf_learner(dls, agg, mode, cbs=[Log(), *extra], **({'sdm_batches': sdm_batches} if name.startswith(('SDMGrad', 'MoDo')) else {}))
        learn.logging = False
        t0 = time.time()
        learn.fit(epochs)
        best = max(range(len(hist)), key=lambda i: sum(hist[i]))
        rows.append((name, *hist[-1], best + 1, *hist[best], (time.time() - t0) / epochs))
    print(f"\n{'method':<24}{'left':>7}{'right':>7}{'best epoch':>12}{'left':>7}{'right':>7}{'s/epoch':>9}   ({epochs} epochs, {n_train:,} training pairs)")
    for r in rows: print(f'{r[0]:<24}{r[1]:7.3f}{r[2]:7.3f}{r[3]:12d}{r[4]:7.3f}{r[5]:7.3f}{r[6]:9.1f}')
    if plot:  # the trade-off: a point per method, one side's accuracy against the other's
        import matplotlib; matplotlib.use('Agg')
        from mtlearn.multitask import plot_tradeoff
        ref = 'sum (no callback)' if any(r[0] == 'sum (no callback)' for r in rows) else None
        ax = plot_tradeoff({r[0]: (r[1], r[2]) for r in rows}, reference=ref, title=f'Multi-Fashion, {epochs} epoch(s)')
        ax.figure.savefig(plot, dpi=120, bbox_inches='tight')
        print(f'trade-off picture: {plot}')
    print('\nreference: EPO reports about 0.80 (left) and 0.79 (right) after 100 epochs on the full set '
          '(Mahapatra & Rajan, ICML 2020, "Multi-task learning with user preferences")')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    p.add_argument('--methods', nargs='*', help='only the methods whose names start with these')
    p.add_argument('--n_train', type=int, default=120_000)
    p.add_argument('--n_test', type=int, default=20_000)
    p.add_argument('--sdm_batches', default='split', choices=('split', 'consecutive'), help="SDMGrad's batches (MultiTaskGradCB)")
    p.add_argument('--quick', action='store_true', help='1 epoch on 12,000 training and 2,000 test pairs')
    p.add_argument('--plot', help="also draw the methods' trade-off (left against right accuracy) to this PNG file")
    a = p.parse_args()
    if a.quick: a.epochs, a.n_train, a.n_test = 1, 12_000, 2_000
    if a.threads: torch.set_num_threads(a.threads)
    main(a.epochs, a.methods, n_train=a.n_train, n_test=a.n_test, sdm_batches=a.sdm_batches, plot=a.plot)
