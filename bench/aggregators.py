"""Per-call time of mtlearn's aggregators against torchjd 0.18.0 on the same inputs, side by side in one run.

For m tasks, J is m × n (n = 100,000 by default, float32, standard normal rows with a shared component so that the
tasks partly agree). 'J→d' times the whole aggregation (Gramian, weights, direction); 'G→w' times the weighting
alone on the precomputed Gramian (for SDMGrad: on A = J₁J₂ᵀ), where the solvers differ. speedup = torchjd / mtlearn.
MGDA is timed with torchjd's stopping rule (epsilon 1e-3, 100 iterations) on both sides, and with mtlearn's
defaults (1e-5, 250). Times are medians of --reps calls after one warm-up call.

    python bench/aggregators.py [--device cpu|cuda] [--n 100000] [--reps 20] [--methods MGDA SDMGrad ...] [--quick]
"""
import argparse, statistics, time
import torch
import torchjd.aggregation as jd
import mtlearn.aggregators as mt

def timeit(f, reps, cuda):
    f()
    ts = []
    for _ in range(reps):
        if cuda: torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        if cuda: torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)

# name, mtlearn weighting, torchjd weighting
METHODS = [
    ('MGDA (1e-3, 100 it)', lambda: mt.MGDAWeighting(epsilon=1e-3, max_iters=100), lambda: jd.MGDAWeighting()),
    ('MGDA (mtlearn defaults)', lambda: mt.MGDAWeighting(), lambda: jd.MGDAWeighting(epsilon=1e-5, max_iters=250)),
    ('SDMGrad', lambda: mt.SDMGradWeighting(), lambda: jd.SDMGradWeighting()),
    ('UPGrad', lambda: mt.UPGradWeighting(), lambda: jd.UPGradWeighting()),
    ('DualProj', lambda: mt.DualProjWeighting(), lambda: jd.DualProjWeighting()),
    ('PCGrad', lambda: mt.PCGradWeighting(), lambda: jd.PCGradWeighting()),
    ('IMTLG', lambda: mt.IMTLGWeighting(), lambda: jd.IMTLGWeighting()),
    ('AlignedMTL', lambda: mt.AlignedMTLWeighting(), lambda: jd.AlignedMTLWeighting()),
    ('CAGrad (c=0.4)', lambda: mt.CAGradWeighting(0.4), lambda: jd.CAGradWeighting(0.4)),
    ('Mean', lambda: mt.MeanWeighting(), lambda: jd.MeanWeighting()),
]

def main(device='cpu', n=100_000, reps=20, ms=(2, 4, 8, 16, 32), methods=None):
    cuda = device.startswith('cuda')
    torch.manual_seed(0)
    print(f'device {device}, n = {n:,}, float32, {torch.get_num_threads()} threads; times in ms (median of {reps})')
    print(f"{'method':<25}{'m':>4}{'J→d mtlearn':>13}{'J→d torchjd':>13}{'speedup':>9}{'G→w mtlearn':>13}{'G→w torchjd':>13}{'speedup':>9}")
    goals = []
    for name, ours, theirs in METHODS:
        if methods and not name.startswith(tuple(methods)): continue
        for m in ms:
            base = torch.randn(1, n, device=device)
            J1, J2 = (torch.randn(m, n, device=device) + base for _ in range(2))
            if name == 'SDMGrad':
                A = J1 @ J2.T
                a_ours, a_jd = ours(), theirs()
                def f_ours(): return a_ours(J1 @ J2.T) @ J1
                def f_jd(): return a_jd(J1 @ J2.T) @ J1
                g_ours, g_jd = (lambda: a_ours(A)), (lambda: a_jd(A))
            else:
                G = J1 @ J1.T
                w_ours, w_jd = ours(), theirs()
                agg_ours, agg_jd = mt.Aggregator(w_ours), jd.GramianWeightedAggregator(w_jd)
                f_ours, f_jd = (lambda: agg_ours(J1)), (lambda: agg_jd(J1))
                g_ours, g_jd = (lambda: w_ours(G)), (lambda: w_jd(G))
            t = [timeit(f, reps, cuda) * 1e3 for f in (f_ours, f_jd, g_ours, g_jd)]
            print(f'{name:<25}{m:>4}{t[0]:>13.3f}{t[1]:>13.3f}{t[1]/t[0]:>9.2f}{t[2]:>13.3f}{t[3]:>13.3f}{t[3]/t[2]:>9.2f}', flush=True)
            if name.startswith('MGDA (1e-3') or name == 'SDMGrad': goals.append((name, m, t[1] / t[0]))
    if not goals: return
    worst = min(goals, key=lambda g: g[2])
    print(f'\nslowest MGDA/SDMGrad speedup: {worst[0]} at m = {worst[1]}')
    print(f"GOAL aggregators_mgda_sdmgrad_min_speedup_{device} {worst[2]:.2f} >= 1.0 {'PASS' if worst[2] >= 1.0 else 'MISS'}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--n', type=int, default=100_000)
    p.add_argument('--reps', type=int, default=20)
    p.add_argument('--methods', nargs='*', help='run only the methods whose names start with these')
    p.add_argument('--quick', action='store_true', help='5 calls per timing, m = 2 and 10 only')
    a = p.parse_args()
    main(a.device, a.n, 5 if a.quick else a.reps, (2, 10) if a.quick else (2, 4, 8, 16, 32), methods=a.methods)
