"""Time to merge three models by Fisher-weighted averaging: mtlearn's exact (CG) and diagonal merges, and the same exact
merge through curvlinops-for-pytorch 3.0.1 (GGNLinearOperator + CGInverseLinearOperator) when it is installed, in one run.

Two cases:
  mlp  the standard example: 3 synthetic regression tasks (20 points, 7 inputs, 3 outputs, batches of 7), a 7→5→5→3 MLP
       trained 10 epochs with SGD at 0.01 per task, MSE.
  cnn  three course CNNs (`mtlearn.init.get_model`, 5 conv layers, BatchNorm-free) each trained one epoch (Adam, 1e-3,
       batch 256) on its own four Fashion-MNIST classes (0-3, 3-6, 6-9); each Fisher from 1,024 of its training images
       (batches of 256), cross-entropy.
curvlinops' CG gets mtlearn's number of iterations as its max_iter (float32 may stall before the tolerance, and
then it would run to its 1000); the one-product rows time a single GGN-vector product of the first model on each side.
Both merges use damping 1e-3 and the formula (ΣF + δI)⁻¹ ΣFθ (mtlearn's damp_to="zero", curvlinops' example) with the
same relative tolerance; curvlinops' residual ‖b − Aθ‖/‖b‖ is measured with mtlearn's operator, and 'Δθ vs mtlearn' is
‖θ_curvlinops − θ_mtlearn‖/‖θ_mtlearn‖ (two solutions within tolerance differ by up to the condition number × it). Times are the median of --reps merges.

    python bench/merge.py [--cases mlp,cnn] [--reps 3] [--rtol 1e-5] [--dtype float32|float64] [--damping 1e-3] [--quick]

curvlinops 3.0.1 depends on torchvision through backpack; where torchvision has no CPU build, install it without
dependencies so that torch stays as it is:
    pip install --no-deps curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv einops linear_operator opt-einsum unfoldNd
"""
import argparse, statistics, time, warnings
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from mtlearn.merge import GGN, fisher_merge, flat_params as flat

def mlp_case():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 5), nn.Sigmoid(), nn.Linear(5, 3)) for _ in range(3)]
    dls = [DataLoader(TensorDataset(torch.rand(20, 7), torch.rand(20, 3)), batch_size=7) for _ in range(3)]
    for m, dl in zip(models, dls):
        opt = torch.optim.SGD(m.parameters(), lr=1e-2)
        for _ in range(10):
            for x, y in dl:
                opt.zero_grad(); F.mse_loss(m(x), y).backward(); opt.step()
    return models, dls, nn.MSELoss()

def cnn_case():
    from mtlearn.datasets import load_fashion_mnist, ds_tensors
    from mtlearn.init import get_model
    torch.manual_seed(0)
    xs, ys = ds_tensors(load_fashion_mnist()['train'])
    xs = (xs.float() / 255 - 0.286) / 0.353
    models, dls = [], []
    for lo in (0, 3, 6):
        keep = (ys >= lo) & (ys < lo + 4)
        x, y = xs[keep], ys[keep]
        m = get_model().cpu()
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        for idx in torch.randperm(len(x)).split(256):
            opt.zero_grad(); F.cross_entropy(m(x[idx]), y[idx]).backward(); opt.step()
        models.append(m)
        dls.append(DataLoader(TensorDataset(x[:1024], y[:1024]), batch_size=256))
    return models, dls, nn.CrossEntropyLoss()

def to_dtype(models, dls, dtype):
    "The models and their data in `dtype` (targets too, where they are floating point)."
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t
    dls = [DataLoader(TensorDataset(*[cast(t) for t in dl.dataset.tensors]), batch_size=dl.batch_size) for dl in dls]
    return [m.to(dtype) for m in models], dls

def timeit(f, reps):
    out, ts = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)

def curvlinops_merge(models, dls, loss_func, damping, rtol, max_iter=1000):
    from curvlinops import GGNLinearOperator, CGInverseLinearOperator
    from curvlinops.examples import IdentityLinearOperator
    ggns = [GGNLinearOperator(m, loss_func, list(m.parameters()), dl, check_deterministic=False) for m, dl in zip(models, dls)]
    thetas = [flat(m) for m in models]
    rhs = sum(g @ t for g, t in zip(ggns, thetas))
    op = damping * IdentityLinearOperator([p.shape for p in models[0].parameters()], rhs.device, rhs.dtype)
    for g in ggns: op = op + g
    inv = CGInverseLinearOperator(op, tolerance=rtol, max_iter=max_iter)
    return inv @ rhs

def main(cases=('mlp', 'cnn'), reps=3, rtol=1e-5, damping=1e-3, dtype=torch.float32):
    torch.set_num_threads(torch.get_num_threads())
    try:
        import curvlinops  # noqa: F401
        have_cl = True
    except ImportError: have_cl = False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}, rtol {rtol:g}, damping {damping:g}, median of {reps}")
    goals = []
    for case in cases:
        models, dls, loss_func = {'mlp': mlp_case, 'cnn': cnn_case}[case]()
        models, dls = to_dtype(models, dls, dtype)
        n = sum(p.numel() for p in models[0].parameters())
        print(f"\n== {case}: 3 models of {n:,} parameters")
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            ex, t_ex = timeit(lambda: fisher_merge(models, dls, loss_func, damping=damping, damp_to='zero', rtol=rtol, progress=False), reps)
            dg, t_dg = timeit(lambda: fisher_merge(models, dls, loss_func, method='diagonal'), reps)
        i = ex.merge_info
        print(f"{'method':<28}{'seconds':>9}{'ratio':>8}   notes")
        print(f"{'mtlearn exact (CG)':<28}{t_ex:9.3f}{1:8.2f}   {i.iterations} iterations, {i.products} products/model, residual {i.residual:.1e}, {i.reason}")
        print(f"{'mtlearn diagonal':<28}{t_dg:9.3f}{t_dg / t_ex:8.2f}")
        if have_cl:
            # the same number of CG iterations as mtlearn took, so that a stall on one side does not turn into 1000 iterations
            th, t_cl = timeit(lambda: curvlinops_merge(models, dls, loss_func, damping, rtol, max_iter=max(i.iterations, 1)), reps)
            d = ((th - flat(ex)).norm() / flat(ex).norm()).item()
            ggns = [GGN(m, dl, loss_func) for m, dl in zip(models, dls)]
            b = sum(g @ flat(m) for g, m in zip(ggns, models))
            res = ((b - sum(g @ th for g in ggns) - damping * th).norm() / b.norm()).item()
            print(f"{'curvlinops exact (CG)':<28}{t_cl:9.3f}{t_cl / t_ex:8.2f}   relative residual {res:.1e}, Δθ vs mtlearn {d:.1e}")
            from curvlinops import GGNLinearOperator
            v = torch.randn(n, dtype=dtype)
            cl_op = GGNLinearOperator(models[0], loss_func, list(models[0].parameters()), dls[0], check_deterministic=False)
            _, t_mv = timeit(lambda: ggns[0] @ v, 5)
            _, t_cmv = timeit(lambda: cl_op @ v, 5)
            print(f"{'one GGN product, mtlearn':<28}{t_mv:9.4f}{1:8.2f}")
            print(f"{'one GGN product, curvlinops':<28}{t_cmv:9.4f}{t_cmv / t_mv:8.2f}")
            goals.append((case, t_cl / t_ex))
        else: print("curvlinops not installed: no comparison")
    if goals: print()
    for case, r in goals: print(f"GOAL merge_exact_speedup_vs_curvlinops_{case} {r:.2f} >= 1.0 {'PASS' if r >= 1 else 'MISS'}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cases', default='mlp,cnn')
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--rtol', type=float, default=1e-5)
    p.add_argument('--dtype', default='float32', choices=['float32', 'float64'], help='the models are trained in float32, then merged in this dtype')
    p.add_argument('--damping', type=float, default=1e-3)
    p.add_argument('--quick', action='store_true', help='one merge per timing (the CNN case still takes minutes)')
    a = p.parse_args()
    main(tuple(a.cases.split(',')), 1 if a.quick else a.reps, a.rtol, a.damping, getattr(torch, a.dtype))
