"""One multi-task aggregation step (the Gramian of J, MGDA's sync-free weights, the direction Jᵀw) run eagerly and as a
CUDA graph replayed on new Jacobians copied into its static input, side by side from one run.

A CUDA graph can hold the step only because the sync-free solver never reads a value back to the host; torchjd's
solvers, and the early-exit paths here, do. m tasks, J of m × n float32; times are medians of --reps steps.

    python bench/cuda_graph.py [--ms 2 10 32] [--n 100000] [--reps 50]
    python bench/cuda_graph.py --dry-run    # on the CPU: the eager step only, to check that the script runs
"""
import argparse, statistics, time
import torch
import mtlearn.aggregators as A

def step_fn(m):
    w = A.MGDAWeighting(sync_free=True)
    return lambda J: w.weights(J @ J.T, True) @ J

def main(ms=(2, 10, 32), n=100_000, reps=50, dry_run=False):
    if dry_run or not torch.cuda.is_available():
        if not dry_run: raise SystemExit('bench/cuda_graph.py needs CUDA (or --dry-run)')
        for m in ms:
            d = step_fn(m)(torch.randn(m, 1000))
            print(f'dry run, CPU: m = {m}, eager step gave a direction of {d.numel()} values')
        return
    print(f'device {torch.cuda.get_device_name()}, n = {n:,}, float32, median of {reps} steps')
    print(f"{'m':>4}{'eager (ms)':>12}{'graph (ms)':>12}{'speedup':>9}")
    worst = None
    for m in ms:
        step = step_fn(m)
        J_static = torch.randn(m, n, device='cuda')
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3): step(J_static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): out = step(J_static)
        Js = [torch.randn(m, n, device='cuda') for _ in range(4)]
        def eager(i): return step(Js[i % 4])
        def graph(i):
            J_static.copy_(Js[i % 4])
            g.replay()
            return out
        ts = {'eager': [], 'graph': []}
        for i in range(reps):
            for k, f in (('eager', eager), ('graph', graph)):
                torch.cuda.synchronize(); t = time.perf_counter()
                f(i)
                torch.cuda.synchronize(); ts[k].append(time.perf_counter() - t)
        torch.testing.assert_close(graph(0), eager(0), rtol=1e-4, atol=1e-5)
        e, gr = statistics.median(ts['eager']) * 1e3, statistics.median(ts['graph']) * 1e3
        print(f'{m:>4}{e:>12.3f}{gr:>12.3f}{e / gr:>9.2f}', flush=True)
        worst = e / gr if worst is None else min(worst, e / gr)
    print(f"\nGOAL cuda_graph_mgda_step_min_speedup {worst:.2f} >= 1.0 {'PASS' if worst >= 1.0 else 'MISS'}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ms', type=int, nargs='*', default=[2, 10, 32])
    p.add_argument('--n', type=int, default=100_000)
    p.add_argument('--reps', type=int, default=50)
    p.add_argument('--dry-run', action='store_true', help='no CUDA needed: run the eager step on the CPU')
    a = p.parse_args()
    main(tuple(a.ms), a.n, a.reps, a.dry_run)
