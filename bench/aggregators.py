"""Per-call time of mtlearn's aggregators against torchjd 0.18.0 on the same inputs, side by side in one run.

For m tasks, J is m × n (n = 100,000 by default, float32, standard normal rows with a shared component so that the
tasks partly agree). 'J→d' times the whole aggregation (Gramian, weights, direction); 'G→w' times the weighting
alone on the precomputed Gramian (for SDMGrad and MoDo: on A = J₁J₂ᵀ), where the solvers differ; the aggregators that
read J itself (ConFIG, TrimmedMean, GradDrop, ExcessMTL), Nash-MTL (torchjd's is an aggregator only) and Mean (torchjd's `Mean`, which needs no Gramian), have
J→d only. speedup = torchjd / mtlearn; one GOAL line
per method, its smallest J→d speedup over the m's.
MGDA is timed with torchjd's stopping rule (epsilon 1e-3, 100 iterations) on both sides, and with mtlearn's
defaults (1e-5, 250). Times are medians of --reps calls after one warm-up call, mtlearn's and torchjd's calls
interleaved, with glibc's allocator kept from returning memory between calls.

    python bench/aggregators.py [--device cpu|cuda] [--n 100000] [--reps 20] [--ms 2 4 8] [--methods MGDA SDMGrad ...] [--json out.json] [--quick]

Many tasks (instance-wise risk minimisation: one task per sample): `--many` times each weighting of a Gramian once on
G = JJᵀ, J of m × 4,000 standard normal rows, at m = 256 and 1,024 (`--ms` to change), torchjd's call stopped after
`--cap` seconds (its time then reads as `>cap`, and the speedup as a lower bound); one GOAL line per method.
"""
import argparse, json, re, statistics, time
import torch
import torchjd.aggregation as jd
import mtlearn.aggregators as mt
from learner_overhead import steady_malloc  # bench/ is on sys.path when this script runs

def timeit(fs, reps, cuda):
    "Median time of each function in `fs`, the calls interleaved (one of each per round), so that drift hits all alike."
    for f in fs: f()
    ts = [[] for _ in fs]
    for _ in range(reps):
        for f, t_ in zip(fs, ts):
            if cuda: torch.cuda.synchronize()
            t = time.perf_counter()
            f()
            if cuda: torch.cuda.synchronize()
            t_.append(time.perf_counter() - t)
    return [statistics.median(t_) for t_ in ts]

# name, kind, mtlearn factory, torchjd factory, smallest m. kind 'G': weightings of the Gramian (also timed alone, G→w);
# 'A': of A = J₁J₂ᵀ from two batches (G→w on A); 'J': aggregators that read J itself (J→d only)
METHODS = [
    ('MGDA (1e-3, 100 it)', 'G', lambda: mt.MGDAWeighting(epsilon=1e-3, max_iters=100, solver='frank_wolfe'),
     lambda: jd.MGDAWeighting(), 2),
    ('MGDA (exact default)', 'G', lambda: mt.MGDAWeighting(), lambda: jd.MGDAWeighting(), 2),  # against torchjd's defaults
    ('MGDA (mtlearn defaults)', 'G', lambda: mt.MGDAWeighting(), lambda: jd.MGDAWeighting(epsilon=1e-5, max_iters=250), 2),
    ('SDMGrad', 'A', lambda: mt.SDMGradWeighting(), lambda: jd.SDMGradWeighting(), 2),
    ('MoDo', 'A', lambda: mt.MoDoWeighting(), lambda: jd.MoDoWeighting(), 2),
    ('UPGrad', 'G', lambda: mt.UPGradWeighting(), lambda: jd.UPGradWeighting(), 2),
    ('DualProj', 'G', lambda: mt.DualProjWeighting(), lambda: jd.DualProjWeighting(), 2),
    ('PCGrad', 'G', lambda: mt.PCGradWeighting(), lambda: jd.PCGradWeighting(), 2),
    ('IMTLG', 'G', lambda: mt.IMTLGWeighting(), lambda: jd.IMTLGWeighting(), 2),
    ('AlignedMTL', 'G', lambda: mt.AlignedMTLWeighting(), lambda: jd.AlignedMTLWeighting(), 2),
    ('CAGrad (c=0.4)', 'G', lambda: mt.CAGradWeighting(0.4), lambda: jd.CAGradWeighting(0.4), 2),
    ('FairGrad (alpha=1)', 'G', lambda: mt.FairGradWeighting(1.), lambda: jd.FairGradWeighting(1.), 2),
    ('Krum (f=1)', 'G', lambda: mt.KrumWeighting(1), lambda: jd.KrumWeighting(1), 4),
    ('GradVac', 'G', lambda: mt.GradVacWeighting(), lambda: jd.GradVacWeighting(), 2),
    ('CR-MOGM (UPGrad)', 'G', lambda: mt.CRMOGMWeighting(mt.UPGradWeighting()), lambda: jd.CRMOGMWeighting(jd.UPGradWeighting()), 2),
    ('Mean', 'J', lambda: mt.Mean(), lambda: jd.Mean(), 2),
    ('ConFIG', 'J', lambda: mt.ConFIG(), lambda: jd.ConFIG(), 2),
    ('TrimmedMean (1)', 'J', lambda: mt.TrimmedMean(1), lambda: jd.TrimmedMean(1), 3),
    ('GradDrop', 'J', lambda: mt.GradDrop(), lambda: jd.GradDrop(), 2),
    ('ExcessMTL', 'J', lambda: mt.ExcessMTL(), lambda: jd.ExcessMTL(), 2),
    ('Random', 'J', lambda: mt.Random(), lambda: jd.Random(), 2),
    ('PCD', 'G', lambda: mt.PCDWeighting(), lambda: jd.PCDWeighting(), 2),
    ('NashMTL', 'J', lambda: mt.NashMTL(), lambda m: jd.NashMTL(n_tasks=m), 2),  # torchjd's needs the number of tasks (and CVXPY)
]

def make(factory, m):
    "Call `factory`, with the number of tasks if it takes it."
    return factory(m) if factory.__code__.co_argcount else factory()

def main(device='cpu', n=100_000, reps=20, ms=(2, 4, 8, 16, 32), methods=None, json_out=None):
    cuda = device.startswith('cuda')
    steady_malloc()  # freed blocks stay in the heap: without it, m × n buffers came back as fresh pages on some calls and not others
    torch.manual_seed(0)
    print(f'device {device}, n = {n:,}, float32, {torch.get_num_threads()} threads; times in ms (median of {reps})')
    print(f"{'method':<25}{'m':>4}{'J→d mtlearn':>13}{'J→d torchjd':>13}{'speedup':>9}{'G→w mtlearn':>13}{'G→w torchjd':>13}{'speedup':>9}")
    rows = []
    for name, kind, ours, theirs in ((r[0], r[1], r[2], r[3]) for r in METHODS if not methods or r[0].startswith(tuple(methods))):
        min_m = next(r[4] for r in METHODS if r[0] == name)
        for m in ms:
            if m < min_m: continue
            base = torch.randn(1, n, device=device)
            J1, J2 = (torch.randn(m, n, device=device) + base for _ in range(2))
            if kind == 'A':
                A = J1 @ J2.T
                a_ours, a_jd = make(ours, m), make(theirs, m)
                def f_ours(): return a_ours(J1 @ J2.T) @ J1
                def f_jd(): return a_jd(J1 @ J2.T) @ J1
                g_ours, g_jd = (lambda: a_ours(A)), (lambda: a_jd(A))
            elif kind == 'G':
                G = J1 @ J1.T
                w_ours, w_jd = make(ours, m), make(theirs, m)
                agg_ours, agg_jd = mt.Aggregator(w_ours), jd.GramianWeightedAggregator(w_jd)
                f_ours, f_jd = (lambda: agg_ours(J1)), (lambda: agg_jd(J1))
                g_ours, g_jd = (lambda: w_ours(G)), (lambda: w_jd(G))
            else:
                agg_ours, agg_jd = make(ours, m), make(theirs, m)
                f_ours, f_jd, g_ours, g_jd = (lambda: agg_ours(J1)), (lambda: agg_jd(J1)), None, None
            t = [x * 1e3 for x in timeit([f_ours, f_jd], reps, cuda)] + ([x * 1e3 for x in timeit([g_ours, g_jd], reps, cuda)] if g_ours else [float('nan')] * 2)
            print(f'{name:<25}{m:>4}{t[0]:>13.3f}{t[1]:>13.3f}{t[1]/t[0]:>9.2f}{t[2]:>13.3f}{t[3]:>13.3f}{t[3]/t[2]:>9.2f}', flush=True)
            rows.append({'method': name, 'm': m, 'ours_ms': t[0], 'torchjd_ms': t[1], 'speedup': t[1] / t[0]})
    if json_out: json.dump({'device': device, 'n': n, 'reps': reps, 'rows': rows}, open(json_out, 'w'), indent=1)
    print()
    for name in dict.fromkeys(r['method'] for r in rows):  # one goal per method: J→d no slower than torchjd at every m
        worst = min((r for r in rows if r['method'] == name), key=lambda r: r['speedup'])
        key = re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')
        print(f"GOAL aggregators_{key}_min_speedup_{device} {worst['speedup']:.2f} >= 1.0 {'PASS' if worst['speedup'] >= 1.0 else 'MISS'} (m = {worst['m']})")

def many(ms=(256, 1024), n=4000, cap=600., methods=None):
    "Each Gramian weighting once at many tasks, against torchjd's (stopped after `cap` seconds)."
    import signal
    class Late(Exception): pass
    def late(*_): raise Late()
    signal.signal(signal.SIGALRM, late)
    torch.manual_seed(0)
    print(f'many tasks: G = JJᵀ, J of m × {n:,} standard normal rows, float32, {torch.get_num_threads()} threads; one call each')
    print(f"{'method':<25}{'m':>6}{'mtlearn (s)':>13}{'torchjd (s)':>13}{'speedup':>9}{'apart':>9}")
    print('(apart: |Jᵀ(w_torchjd − w_mtlearn)| / |Jᵀw_mtlearn|, how far apart the two directions are)')
    worst = {}
    for name, kind, ours, theirs, _ in METHODS:
        if kind != 'G' or (methods and not name.startswith(tuple(methods))): continue
        for m in ms:
            G = (J := torch.randn(m, n)) @ J.T
            def once(f):
                t = time.perf_counter(); w = f(G)
                return time.perf_counter() - t, w
            f_ours = make(ours, m)
            t_ours, w = once(f_ours)
            if t_ours < 2: t_ours = min(t_ours, once(f_ours)[0])  # (short calls: the better of two, past first-call costs)
            assert torch.isfinite(w).all(), name
            signal.setitimer(signal.ITIMER_REAL, cap)
            try:
                f_jd, more = make(theirs, m), ''
                t_jd, w_jd = once(f_jd)
                if t_jd < 2: t_jd = min(t_jd, once(f_jd)[0])
                apart = f"{float(((w_jd.to(w) - w) @ J).norm() / (w @ J).norm()):.1e}"
            except Late: t_jd, more, apart = cap, '>', '-'
            finally: signal.setitimer(signal.ITIMER_REAL, 0)
            r = t_jd / t_ours
            print(f"{name:<25}{m:>6}{t_ours:>13.3f}{more + f'{t_jd:.3f}':>13}{more + f'{r:.2f}':>9}{apart:>9}", flush=True)
            if name not in worst or r < worst[name][0]: worst[name] = (r, m, more)
    print()
    for name, (r, m, more) in worst.items():
        key = re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')
        print(f"GOAL aggregators_many_{key}_min_speedup {more}{r:.2f} >= 1.0 {'PASS' if r >= 1.0 else 'MISS'} (m = {m})")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--n', type=int, default=100_000)
    p.add_argument('--reps', type=int, default=20)
    p.add_argument('--ms', type=int, nargs='*', default=[2, 4, 8, 16, 32], help='numbers of tasks (default 2 4 8 16 32)')
    p.add_argument('--methods', nargs='*', help='run only the methods whose names start with these')
    p.add_argument('--json', help='also write the timings to this JSON file')
    p.add_argument('--quick', action='store_true', help='5 calls per timing, m = 2 and 10 only')
    p.add_argument('--many', action='store_true', help='many tasks: m = 256 and 1,024 (or --ms), one call each')
    p.add_argument('--cap', type=float, default=600., help='--many: stop torchjd\'s call after this many seconds')
    a = p.parse_args()
    if a.many: many(tuple(a.ms) if a.ms != [2, 4, 8, 16, 32] else (256, 1024), cap=a.cap, methods=a.methods)
    else: main(a.device, a.n, 5 if a.quick else a.reps, (2, 10) if a.quick else tuple(a.ms), methods=a.methods, json_out=a.json)
