"""Multi-task training on 2 CPU processes against 1, on the same global batch, and what each mode sends between them.

A LeNet-style shared encoder (36×36 grey images, as Multi-Fashion) with m linear heads, global batch 256, SGD, MGDA through
`MultiTaskGradCB` and `DistributedCB`; the processes are started here (torch.multiprocessing, gloo), the one-process run
with 2 threads, each of the two processes with 1, so that both use the machine's 2 cores.
  step time:  seconds per training step (median over --reps fits of --steps steps) of each mode, 2 processes / 1 process
  traffic:    seconds of one all-reduce of what each mode sends per step (best of 7 runs of 10), as a ratio to the all-reduce of one gradient
              (all shared and head parameters): 'features' the m×m Gramian (then one gradient), 'params' the m×n Jacobian
              of the shared parameters, 'params' with reduce='gramian' the m×m Gramian (then one gradient)

    python bench/distributed.py [--ms 2,5,10] [--steps 8] [--reps 3] [--quick]
"""
import argparse, os, socket, statistics, time
import torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

def _port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

MODES = {'params (J all-reduce)': dict(mode='params'), 'features (Gramian)': dict(mode='features'),
         'params, reduce=gramian': dict(mode='params', reduce='gramian')}

def worker(rank, world, port, ms, steps, reps, q):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(2 // world)
    if world > 1: dist.init_process_group('gloo', rank=rank, world_size=world)
    from mtlearn.learner import TrainLearner
    from mtlearn.datasets import DataLoaders, TensorDataLoader
    from mtlearn.accel import DistributedCB
    from mtlearn.aggregators import MGDA
    from mtlearn.multitask import MultiTaskModel, MultiTaskLoss, MultiTaskGradCB, lenet_encoder
    out = {}
    for m in ms:
        g = torch.Generator().manual_seed(0)
        x, ys = torch.randn(256 * steps, 1, 36, 36, generator=g), [torch.randint(0, 10, (256 * steps,), generator=g) for _ in range(m)]
        for name, kw in MODES.items():
            def fit():
                torch.manual_seed(0)
                model = MultiTaskModel(lenet_encoder(), [nn.Linear(50, 10) for _ in range(m)])
                dls = DataLoaders(TensorDataLoader(x, *ys, batch_size=256 // world), [])
                learn = TrainLearner(model, dls, MultiTaskLoss(*[F.cross_entropy] * m), lr=0.01, cbs=[DistributedCB(), MultiTaskGradCB(MGDA(), **kw)])
                learn.logging = False
                t = time.perf_counter()
                learn.fit(1, valid=False)
                return (time.perf_counter() - t) / steps, model
            fit()  # warm-up
            times = [fit()[0] for _ in range(reps)]
            out[(m, name)] = statistics.median(times)
        if world > 1:  # the all-reduce of each mode's message, against one gradient's
            model = MultiTaskModel(lenet_encoder(), [nn.Linear(50, 10) for _ in range(m)])
            n_all, n_shared = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.encoder.parameters())
            msgs = {'gradient': torch.randn(n_all), 'jacobian': torch.randn(m, n_shared), 'gramian': torch.randn(m, m)}
            for k, t in msgs.items():
                for _ in range(3): dist.all_reduce(t)
                ts = []
                for _ in range(7):
                    dist.barrier()  # both processes start together: the time is the all-reduces', not one waiting for the other
                    s = time.perf_counter()
                    for _ in range(10): dist.all_reduce(t)
                    ts.append((time.perf_counter() - s) / 10)
                out[(m, 'allreduce ' + k)] = min(ts)  # the least disturbed of 7 runs of 10 (scheduling on 2 cores adds ms at random)
            out[(m, 'n')] = (n_all, n_shared)
    if rank == 0: q.put(out)
    if world > 1: dist.destroy_process_group()

def run(world, ms, steps, reps):
    ctx = mp.get_context('spawn')
    q, port = ctx.Queue(), _port()
    ps = [ctx.Process(target=worker, args=(r, world, port, ms, steps, reps, q)) for r in range(world)]
    for p in ps: p.start()
    out = q.get(timeout=1800)
    for p in ps: p.join()
    return out

def main(ms=(2, 5, 10), steps=8, reps=3):
    print(f"torch {torch.__version__}, global batch 256, {steps} steps per fit, median of {reps}; 1 process × 2 threads against 2 × 1")
    one, two = run(1, ms, steps, reps), run(2, ms, steps, reps)
    goals = []
    for m in ms:
        n_all, n_shared = two[(m, 'n')]
        print(f"\n== m = {m} tasks ({n_shared:,} shared parameters, {n_all:,} in all)")
        print(f"{'mode':<26}{'1 process':>12}{'2 processes':>14}{'2 / 1':>8}")
        for name in MODES:
            a, b = one[(m, name)], two[(m, name)]
            print(f"{name:<26}{a * 1000:10.1f}ms{b * 1000:12.1f}ms{b / a:8.2f}")
        grad = two[(m, 'allreduce gradient')]
        print(f"{'all-reduce of':<26}{'seconds':>12}{'/ gradient':>14}")
        for k, sent in (('gradient', 'gradient'), ('jacobian', 'params: J'), ('gramian', 'features: Gramian')):
            t = two[(m, 'allreduce ' + k)]
            print(f"{sent:<26}{t * 1e6:10.0f}µs{t / grad:14.2f}")
        for name, short in zip(MODES, ('params', 'features', 'gramian')):  # the same work on the same cores: what is left is the talking
            goals.append((f'distributed_step_ratio_{short}_m{m}', two[(m, name)] / one[(m, name)], '<=', 1.5))
    print()
    for name, v, op, target in goals:
        print(f"GOAL {name} {v:.2f} {op} {target} {'PASS' if v <= target else 'MISS'}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--ms', default='2,5,10')
    p.add_argument('--steps', type=int, default=8)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--quick', action='store_true', help='m = 2 and 10, 4 steps, 2 repetitions')
    a = p.parse_args()
    if a.quick: a.ms, a.steps, a.reps = '2,10', 4, 2
    main(tuple(int(x) for x in a.ms.split(',')), a.steps, a.reps)
