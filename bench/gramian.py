"""The Gramian of per-sample losses: mtlearn's GramianEngine against torchjd 0.18's `autogram.Engine` and against building
the Jacobian (`jac`, then J Jᵀ), in time and peak memory; and an IWRM training step with UPGrad against a plain SGD step.

Models: an MLP (784-256-128-10), the course CNN (five stride-2 convolutions, 1-8-16-32-64-10 channels, 28×28
Fashion-MNIST-sized inputs), and the course CNN with BatchNorm (torchjd refuses BatchNorm with `batch_dim`, so it
runs with `batch_dim=None`; mtlearn's engine takes its general path). Each timed call is a forward pass and the
Gramian of the cross-entropy per sample; times are medians over --reps, the variants interleaved.

Peak memory: on the GPU, the allocator's peak (`torch.cuda.max_memory_allocated`) above what the forward pass alone
needs, in one process; on the CPU (Linux), the peak resident set (VmHWM) of a fresh process per variant, above a fresh
process that runs the forward pass only (the CPU allocator gives freed memory back, so the peak is what was live).

    python bench/gramian.py [--quick] [--reps 25] [--device cpu|cuda] [--sizes 64 256] [--models mlp cnn cnn-bn]
"""
import argparse, json, statistics, subprocess, sys, time, warnings
import torch
import torch.nn.functional as F
from torch import nn
from mtlearn.aggregators import UPGradWeighting
from mtlearn.gramian import GramianEngine, gramian_backward, jac
from mtlearn.init import get_model

def models():
    return {
        'mlp': lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                     nn.Linear(128, 10)),
        'cnn': lambda: get_model().cpu(),
        'cnn-bn': lambda: get_model(norm=nn.BatchNorm2d).cpu(),
    }

def data(bs, device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(bs, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (bs,), generator=g).to(device)

def variant(name, model_name, device):
    "A model and a function that runs the forward pass and the Gramian of the per-sample losses, for variant `name`."
    torch.manual_seed(0)
    model = models()[model_name]().to(device)
    if name == 'mtlearn': e = GramianEngine(model)
    elif name == 'torchjd':
        from torchjd.autogram import Engine
        e = Engine(model, batch_dim=None if model_name == 'cnn-bn' else 0)
    def step(x, y):
        losses = F.cross_entropy(model(x), y, reduction='none')
        if name == 'mtlearn': return e.gramian(losses)
        if name == 'torchjd': return e.compute_gramian(losses)
        if name == 'jacobian':
            J = torch.cat([j.flatten(1) for j in jac(losses, list(model.parameters()))], 1)
            return J @ J.T
        return losses.detach()  # 'forward': the baseline of the memory figures
    return model, step

def sync(device):
    if device == 'cuda': torch.cuda.synchronize()

def time_variants(names, model_name, bs, device, reps):
    x, y = data(bs, device)
    steps = {n: variant(n, model_name, device)[1] for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # (BatchNorm: mtlearn's engine says it takes the general path)
        for s in steps.values(): s(x, y); s(x, y)  # warm-up
        ts = {n: [] for n in names}
        for _ in range(reps):
            for n, s in steps.items():
                sync(device); t = time.perf_counter(); s(x, y); sync(device)
                ts[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in ts.items()}

def peak_memory(name, model_name, bs, device):
    "Bytes at the peak of one call of variant `name`, above the forward pass alone."
    if device == 'cuda':
        x, y = data(bs, device)
        out = {}
        for n in ('forward', name):
            _, step = variant(n, model_name, device)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                step(x, y)
                torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
                step(x, y)
                torch.cuda.synchronize(); out[n] = torch.cuda.max_memory_allocated() - base
        return out[name] - out['forward']
    rss = {}
    for n in ('forward', name):
        p = subprocess.run([sys.executable, __file__, '--rss', n, model_name, str(bs)], capture_output=True, text=True)
        if p.returncode: raise RuntimeError(p.stderr[-2000:])
        rss[n] = json.loads(p.stdout.strip().splitlines()[-1])
    return rss[name] - rss['forward']

def rss_child(name, model_name, bs):
    "In a fresh process: two calls of the variant, then the peak resident set in bytes (Linux's VmHWM, in kB)."
    torch.set_num_threads(1)
    x, y = data(bs, 'cpu')
    _, step = variant(name, model_name, 'cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        step(x, y); step(x, y)
    # VmHWM, the address space's own peak (ru_maxrss would carry the parent's peak across fork and exec)
    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))
    print(json.dumps(int(hwm.split()[1]) * 1024))

def iwrm_vs_sgd(bs, device, reps):
    "A training step of the course CNN: SGD on the mean loss against IWRM with UPGrad (`gramian_backward`)."
    x, y = data(bs, device)
    def make(iwrm):
        torch.manual_seed(0)
        model = get_model().to(device)
        opt, e, wt = torch.optim.SGD(model.parameters(), lr=0.01), GramianEngine(model), UPGradWeighting()
        def step():
            losses = F.cross_entropy(model(x), y, reduction='none')
            if iwrm: gramian_backward(losses, wt, e)  # the weights from the Gramian, the gradient from its pieces
            else: losses.mean().backward()
            opt.step(); opt.zero_grad()
        if not iwrm: e.remove()
        return step
    steps = {'SGD': make(False), 'IWRM + UPGrad': make(True)}
    for s in steps.values(): s(); s()
    ts = {n: [] for n in steps}
    for _ in range(reps):
        for n, s in steps.items():
            sync(device); t = time.perf_counter(); s(); sync(device)
            ts[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in ts.items()}

def goal(name, v, op, target):
    ok = v <= target if op == '<=' else v >= target
    print(f"GOAL {name} {v:.3f} {op} {target} {'PASS' if ok else 'MISS'}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer repetitions; still every goal')
    ap.add_argument('--reps', type=int, default=25)
    ap.add_argument('--models', nargs='+', default=list(models()), choices=list(models()))
    ap.add_argument('--sizes', type=int, nargs='+', default=[64, 256], help='batch sizes (the goals read 64 and 256)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--rss', nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss: return rss_child(a.rss[0], a.rss[1], int(a.rss[2]))
    reps = 3 if a.quick else a.reps
    print(f'torch {torch.__version__}, {a.device}, {torch.get_num_threads()} threads, median of {reps}')
    print(f"\n{'model':7} {'batch':>5} {'mtlearn ms':>10} {'torchjd ms':>10} {'J Jᵀ ms':>8} {'mtlearn MB':>10} "
          f"{'torchjd MB':>10} {'J Jᵀ MB':>8} {'time vs torchjd':>16} {'memory vs torchjd':>18} {'memory vs J':>12}")
    worst_t, worst_m, vs_j = 0., 0., None
    for model_name in a.models:
        for bs in a.sizes:
            names = ['mtlearn', 'torchjd'] + (['jacobian'] if model_name != 'cnn-bn' else [])
            t = time_variants(names, model_name, bs, a.device, reps)
            mem = {n: peak_memory(n, model_name, bs, a.device) for n in names}
            rt, rm = t['mtlearn'] / t['torchjd'], mem['mtlearn'] / max(mem['torchjd'], 1)
            rj = mem['mtlearn'] / max(mem['jacobian'], 1) if 'jacobian' in mem else None
            worst_t, worst_m = max(worst_t, rt), max(worst_m, rm)
            if model_name == 'cnn' and bs == max(a.sizes): vs_j = rj  # (the goal's batch: 256)
            tj = f"{1000 * t['jacobian']:8.1f}" if 'jacobian' in t else f"{'-':>8}"
            mj = f"{mem['jacobian'] / 2**20:8.1f}" if 'jacobian' in mem else f"{'-':>8}"
            print(f"{model_name:7} {bs:5} {1000 * t['mtlearn']:10.1f} {1000 * t['torchjd']:10.1f} {tj} "
                  f"{mem['mtlearn'] / 2**20:10.1f} {mem['torchjd'] / 2**20:10.1f} {mj} {rt:16.2f} "
                  f"{rm:18.2f} {'-' if rj is None else f'{rj:.2f}':>12}", flush=True)
    print('  (memory: peak above the forward pass alone;', 'allocator peak)' if a.device == 'cuda'
          else 'peak resident set of a fresh process per variant)')
    s = iwrm_vs_sgd(a.sizes[0], a.device, reps * 2)
    r = s['IWRM + UPGrad'] / s['SGD']
    print(f"\ncourse CNN, batch {a.sizes[0]}, one training step: SGD {1000 * s['SGD']:.1f} ms, IWRM + UPGrad "
          f"{1000 * s['IWRM + UPGrad']:.1f} ms ({r:.2f}×)\n")
    goal('gramian_time_vs_torchjd_worst', worst_t, '<=', 1.0)
    goal('gramian_memory_vs_torchjd_worst', worst_m, '<=', 1.0)
    if vs_j is not None: goal('gramian_memory_vs_jacobian_cnn_b256', vs_j, '<=', 0.25)
    goal('iwrm_upgrad_step_vs_sgd_cnn_b64', r, '<=', 3.0)

if __name__ == '__main__': main()
