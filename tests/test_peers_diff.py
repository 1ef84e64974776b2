"""Differential tests: mtlearn against torchjd 0.18.0 (every class both have) and LibMTL 1.1.5 (optional: its
weighting modules are loaded by path, as its package imports torchvision), on the same inputs, over successive calls.
Where mtlearn differs on purpose (the differences table of 20_aggregators), the test checks the property that makes
it differ."""
import importlib.util, sys, types
import pytest, torch
from torch import nn
import torch.nn.functional as F
from mtlearn.aggregators import *
from mtlearn.loss_weighting import GLS, UW, RLW, DWA

jd = pytest.importorskip('torchjd.aggregation')
pytestmark = pytest.mark.filterwarnings('ignore:You are solving a parameterized problem', 'ignore:divide by zero',
                                        'ignore:invalid value encountered')

def cases(seed, m=5, n=12):
    "Sampled Jacobians of every kind: (name, J)."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    yield 'normal', r(m, n)
    yield 'faces', r(m, n) + 3 * r(1, n)  # a shared component: the min-norm point on a face of the simplex
    J = r(m, n); J[1] = -J[0]; yield 'weak', J  # weakly stationary: g₁ + g₂ = 0
    J = r(m, n); J[-1] = -torch.rand(m - 1, generator=g, dtype=torch.float64) @ J[:-1]  # 0 inside the hull
    yield 'strong', J
    J = r(m, n); J[2] = 0; yield 'zero_row', J  # a task without gradient
    yield 'wide', r(m + 3, m)  # more tasks than dimensions

def scale(J): return J.norm(dim=1).max().clamp_min(1e-300)

SAME = {  # equal to torchjd's direction on every kind of Jacobian, to `tol` of the longest gradient
    'Mean': (Mean, jd.Mean, 1e-12), 'Sum': (Sum, jd.Sum, 1e-12),
    'MGDA-fw': (lambda: MGDA(epsilon=1e-3, max_iters=100, solver='frank_wolfe'), jd.MGDA, 1e-9),
    'UPGrad': (UPGrad, jd.UPGrad, 1e-8), 'DualProj': (DualProj, jd.DualProj, 1e-8),
    'UPGrad-pref': (lambda: UPGrad(pref_vector=[1., 2., 3., 4., 5.]),
                    lambda: jd.UPGrad(pref_vector=torch.arange(1., 6.)), 1e-8),
    'IMTLG': (IMTLG, jd.IMTLG, 1e-8), 'AlignedMTL': (AlignedMTL, jd.AlignedMTL, 1e-8),
    'AlignedMTL-median': (lambda: AlignedMTL(scale_mode='median'), lambda: jd.AlignedMTL(scale_mode='median'), 1e-8),
    'AlignedMTL-rmse': (lambda: AlignedMTL(scale_mode='rmse'), lambda: jd.AlignedMTL(scale_mode='rmse'), 1e-8),
    'CAGrad': (lambda: CAGrad(0.4), lambda: jd.CAGrad(0.4), 1e-4),  # (Clarabel's tolerance there)
    'Krum': (lambda: Krum(1), lambda: jd.Krum(1), 1e-12), 'Krum-3': (lambda: Krum(1, 3), lambda: jd.Krum(1, 3), 1e-12),
    'TrimmedMean': (lambda: TrimmedMean(1), lambda: jd.TrimmedMean(1), 1e-12),
    'ConFIG': (ConFIG, jd.ConFIG, 1e-8), 'PCD': (PCD, jd.PCD, 1e-6),
}

@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('name', list(SAME))
def test_same_as_torchjd(name, seed):
    ours, theirs, tol = SAME[name]
    for case, J in cases(seed):
        if name.endswith('-pref') and len(J) != 5: continue  # (one preference per task)
        torch.testing.assert_close(ours()(J), theirs()(J), rtol=0, atol=tol * scale(J), msg=f'{name} on {case}')

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mgda_exact_is_never_longer_than_torchjds_frank_wolfe(seed):
    "Frank-Wolfe approaches the minimum-norm point from above: the exact point is at most as long, and close."
    for case, J in cases(seed):
        d, dj = MGDA()(J), jd.MGDA(epsilon=1e-12, max_iters=20_000)(J)
        assert d.norm() <= dj.norm() + 1e-9 * scale(J), case
        assert (d - dj).norm() <= 2e-2 * scale(J), case

@pytest.mark.parametrize('alpha', [0.5, 1., 2.])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fairgrad_as_torchjd_and_nearer_zero_where_the_tasks_cancel(alpha, seed):
    for case, J in cases(seed):
        d, dj, s = FairGrad(alpha)(J), jd.FairGrad(alpha)(J), scale(J)
        if case in ('strong', 'wide') and MGDA()(J).norm() <= 1e-9 * s:  # 0 inside the hull: no α-fair direction
            assert d.norm() <= min(1e-4 * s, dj.norm()), case             # but 0, where torchjd's solve stops short
        else: torch.testing.assert_close(d, dj, rtol=0, atol=(1e-5 if case == 'weak' else 1e-6) * s, msg=case)

@pytest.mark.parametrize('seed', [0, 1])
def test_nash_mtl_as_torchjd_over_successive_calls(seed):
    "Same directions to torchjd's residual (1e-3) where the bargaining problem has a solution; finite and"
    "non-conflicting where it has none (tasks that cancel, a task without gradient), where torchjd's may not be."
    ours, theirs = NashMTL(), jd.NashMTL(5)
    for case, J in cases(seed):
        if len(J) != 5: continue
        d, dj = ours(J), theirs(J)
        assert torch.isfinite(d).all(), case
        if case in ('normal', 'faces'): torch.testing.assert_close(d, dj, rtol=1e-3, atol=1e-4 * scale(J), msg=case)
        else: assert (J @ d).min() >= -1e-6 * scale(J) ** 2, case

def test_stateful_over_successive_calls():
    "The same sequence of Jacobians (all kinds, in turn) through both: the state carried alike."
    seq = [J for _, J in cases(3) if len(J) == 5] * 2
    pairs = [(SDMGradWeighting(), jd.SDMGradWeighting(), 'A'),
             (MoDoWeighting(gamma=0.2), jd.MoDoWeighting(gamma=0.2), 'A'),
             (CRMOGMWeighting(UPGradWeighting(), alpha=0.6), jd.CRMOGMWeighting(jd.UPGradWeighting(), alpha=0.6), 'G'),
             (PCDWeighting(tau=0.1, beta=0.9), jd.PCDWeighting(tau=0.1, beta=0.9), 'G')]
    for ours, theirs, kind in pairs:
        for k, J in enumerate(seq):
            M = J @ seq[k - 1].T if kind == 'A' else J @ J.T
            torch.testing.assert_close(ours(M), theirs(M), rtol=0, atol=1e-6, msg=f'{type(ours).__name__} call {k}')
    # (without a warm-up the first call differs on purpose: test_excess_mtl_first_call_as_the_authors)
    for warm in (1, 3):
        ours, theirs = ExcessMTL(n_warmup_steps=warm), jd.ExcessMTL(n_warmup_steps=warm)
        for k, J in enumerate(seq):
            torch.testing.assert_close(ours(J), theirs(J), rtol=1e-9, atol=1e-12, msg=f'call {k}')

@pytest.mark.parametrize('seed', [0, 1])
def test_random_ones_with_matched_draws(seed):
    "PCGrad's and GradVac's orders, GradDrop's masks and Random's weights drawn as torchjd draws them."
    gv_ours, gv_jd = GradVac(beta=0.4), jd.GradVac(beta=0.4)
    for case, J in cases(seed):
        pairs = [(PCGrad(), jd.PCGrad()), (gv_ours, gv_jd), (GradDrop(), jd.GradDrop()), (Random(), jd.Random())]
        for ours, theirs in pairs:
            torch.manual_seed(seed); a = ours(J)
            torch.manual_seed(seed); b = theirs(J)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * scale(J), msg=f'{type(ours).__name__} on {case}')
        gv_ours.reset(); gv_jd.reset()  # (the next case may have another number of tasks)

def test_no_task_gives_the_zero_vector():
    "Where torchjd raises (ZeroDivisionError, IndexError, ValueError for most), mtlearn returns the zero vector."
    J = torch.zeros(0, 4, dtype=torch.float64)
    for agg in (Mean(), Sum(), MGDA(), UPGrad(), DualProj(), PCGrad(), IMTLG(), AlignedMTL(), CAGrad(0.4), ConFIG(),
                FairGrad(1.), NashMTL(), PCD(), GradVac(), GradDrop(), Random(), ExcessMTL(), CRMOGM(MGDA())):
        assert torch.equal(agg(J), torch.zeros(4, dtype=torch.float64)), type(agg).__name__

# ---- LibMTL 1.1.5: the weighting classes of its wheel, driven with the same model, batches and seeds, in float64
def libmtl(name):
    "LibMTL's weighting class `name`, its module loaded by path (its package's __init__ imports torchvision)."
    if 'LibMTL' in sys.modules: root = sys.modules['LibMTL'].__path__[0]
    else:
        spec = importlib.util.find_spec('LibMTL')
        if spec is None: pytest.skip('LibMTL is not installed (pip install --no-deps LibMTL==1.1.5)')
        root = spec.submodule_search_locations[0]
    for pkg in ('LibMTL', 'LibMTL.weighting'):
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg); mod.__path__ = [root if pkg == 'LibMTL' else root + '/weighting']
            sys.modules[pkg] = mod
    for mod_name in ('abstract_weighting', name):
        full = f'LibMTL.weighting.{mod_name}'
        if full not in sys.modules:
            s = importlib.util.spec_from_file_location(full, f'{root}/weighting/{mod_name}.py')
            sys.modules[full] = m = importlib.util.module_from_spec(s)
            s.loader.exec_module(m)
    return getattr(sys.modules[f'LibMTL.weighting.{name}'], name)

class TwoLayer(nn.Module):
    "A shared encoder and one linear head per task, in float64."
    def __init__(self, m, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).double()
        self.heads = nn.ModuleList([nn.Linear(6, 1).double() for _ in range(m)])
    def losses(self, x, ys):
        z = self.encoder(x)
        return torch.stack([F.mse_loss(h(z), y) for h, y in zip(self.heads, ys)])

def batches(m, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(k):
        x = torch.randn(16, 4, generator=g, dtype=torch.float64)
        yield x, [torch.randn(16, 1, generator=g, dtype=torch.float64) + i for i in range(m)]

def drive_libmtl(name, m, seed, **kwargs):
    "LibMTL's `name` on TwoLayer: per step, the shared parameters' new gradient and the weights its backward returns."
    base = libmtl(name)
    class Model(base, TwoLayer):
        def __init__(self):
            TwoLayer.__init__(self, m, seed)
            self.task_num, self.device, self.rep_grad, self.epoch = m, torch.device('cpu'), False, 0
        def get_share_params(self): return self.encoder.parameters()
        def zero_grad_share_params(self): self.encoder.zero_grad(set_to_none=False)
    model, out = Model(), []
    model.init_param()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # (LibMTL builds its gradient matrices in the default dtype)
    try:
        for x, ys in batches(m, seed=seed):
            model.zero_grad()
            w = model.backward(model.losses(x, ys), **kwargs)
            out.append((torch.cat([p.grad.flatten() for p in model.encoder.parameters()]), w))
            with torch.no_grad():
                for p in model.parameters(): p -= 0.1 * p.grad  # the same SGD step on both sides
    finally: torch.set_default_dtype(default)
    return out

def drive_ours(agg, m, seed):
    "mtlearn's `agg` on the same model and batches: the shared parameters' direction and the weights, per step."
    model, out = TwoLayer(m, seed), []
    shared = list(model.encoder.parameters())
    for x, ys in batches(m, seed=seed):
        L = model.losses(x, ys)
        J = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(L[i], shared, retain_graph=True)])
                         for i in range(m)])
        if agg.needs_losses: agg.set_losses(L.detach())
        d = agg(J)
        out.append((d, agg.last_weights))
        heads = torch.autograd.grad(L.sum(), list(model.heads.parameters()))  # each head its own gradient
        with torch.no_grad():
            for p, g in zip(shared, d.split([p.numel() for p in shared])): p -= 0.1 * g.view_as(p)
            for p, g in zip(model.heads.parameters(), heads): p -= 0.1 * g
    return out

def test_libmtl_ew_is_sum():
    for (d, _), (g, _) in zip(drive_ours(Sum(), 3, 0), drive_libmtl('EW', 3, 0)): torch.testing.assert_close(d, g)

@pytest.mark.parametrize('gn', ['none', 'l2', 'loss', 'loss+'])
def test_libmtl_mgda_weights(gn):
    "The same min-norm weights (LibMTL's solver lands within 1e-4 of the exact ones). LibMTL then applies them to the"
    "rescaled gradients, mtlearn (as Sener & Koltun's MGDA-UB code) to the unscaled ones: compared through the weights."
    ours, theirs = drive_ours(MGDA(norm_type=gn), 3, 1), drive_libmtl('MGDA', 3, 1, mgda_gn=gn)
    steps = len(ours) if gn == 'none' else 1  # (after a step the models part: the directions differ by the rescaling)
    for k, ((_, w), (_, sol)) in enumerate(zip(ours[:steps], theirs[:steps])):
        torch.testing.assert_close(w, torch.as_tensor(sol, dtype=w.dtype), rtol=0, atol=1e-4, msg=f'step {k}')

def test_libmtl_imtl_gradient_part():
    "IMTL's gradient weights (LibMTL's IMTL is IMTL-G on the gradients of its IMTL-L losses, e^s L − s: L at s = 0)."
    (_, w), = drive_ours(IMTLG(), 3, 2)[:1]
    (_, alpha), = drive_libmtl('IMTL', 3, 2)[:1]
    torch.testing.assert_close(w, torch.as_tensor(alpha, dtype=w.dtype), rtol=0, atol=1e-9)

def test_libmtl_cagrad():
    "LibMTL's CAGrad (SciPy's SLSQP on the dual, rescale=0) and mtlearn's: the same direction to SLSQP's default"
    "tolerance (LibMTL's weights stop about 1e-3 short of the optimum)."
    ours, theirs = drive_ours(CAGrad(0.4), 3, 3), drive_libmtl('CAGrad', 3, 3, calpha=0.4, rescale=0)
    d, g = ours[0][0], theirs[0][0]
    torch.testing.assert_close(d, g, rtol=0, atol=3e-3 * g.norm())

def test_libmtl_pcgrad_and_gradvac_with_two_tasks():
    "With two tasks the visiting order is fixed, so the random methods agree draw for draw; over several steps"
    "GradVac's targets part ways: LibMTL moves φ̂ only when it corrects (the paper, torchjd, mtlearn: at every visit)."
    for (d, _), (g, _) in zip(drive_ours(PCGrad(), 2, 4), drive_libmtl('PCGrad', 2, 4)):
        torch.testing.assert_close(d, g)
    (d, _), (g, _) = drive_ours(GradVac(beta=0.5, eps=0.), 2, 4)[0], drive_libmtl('GradVac', 2, 4, beta=.5)[0]
    torch.testing.assert_close(d, g)

def test_libmtl_loss_weightings():
    "GLS, UW, RLW (matched draws), DWA: the gradients of LibMTL's totals are mtlearn's weighted sums."
    m = 3
    for name, wt, kw in [('GLS', GLS(), {}), ('UW', UW(m), {}), ('RLW', RLW(), {'dist': 'Normal'})]:
        theirs = drive_libmtl(name, m, 6, **kw)
        model = TwoLayer(m, 6)  # (the same random state after it as LibMTL's: RLW's draws match)
        x, ys = next(batches(m, seed=6))
        L = model.losses(x, ys)
        w = wt.weights(L.detach().float()).double()  # (LibMTL draws RLW's weights in float32)
        d = torch.autograd.grad((w * L).sum(), list(model.encoder.parameters()))  # the shared direction Σ wᵢ gᵢ
        torch.testing.assert_close(torch.cat([g.flatten() for g in d]), theirs[0][0], msg=name)
    dwa = DWA(T=2.)
    hist = torch.tensor([[1.0, 2.0, 4.0], [0.5, 2.0, 2.0]], dtype=torch.float64)
    for h in hist: dwa.end_epoch(h)
    lib = libmtl('DWA')
    class M(lib, nn.Module):
        def __init__(self): nn.Module.__init__(self)
    d = M(); d.task_num, d.device, d.epoch, d.train_loss_buffer = 3, torch.device('cpu'), 2, hist.T.numpy()
    L = torch.tensor([1., 1., 1.], dtype=torch.float64, requires_grad=True)
    w = d.backward(L, T=2.)
    torch.testing.assert_close(dwa.weights(L.detach()), torch.as_tensor(w, dtype=torch.float64))

# ---- methods that LibMTL has only in its repository: against hand computations of the same formulas
def test_aligned_mtl_by_hand():
    "Aligned-MTL (Senushkin et al., CVPR 2023): B = σ_min V Σ⁻¹ Vᵀ from the Gramian's eigendecomposition, w = B·pref."
    for case, J in cases(4):
        G = J @ J.T
        lam, V = torch.linalg.eigh(G)
        keep = lam > lam.max() * len(G) * torch.finfo(G.dtype).eps
        smin = lam[keep].min()
        B = smin.sqrt() * (V[:, keep] / lam[keep].sqrt()) @ V[:, keep].T
        want = B @ torch.full((len(G),), 1 / len(G), dtype=G.dtype)
        torch.testing.assert_close(AlignedMTLWeighting()(G), want, msg=case)

@pytest.mark.parametrize('alpha', [0.5, 1., 2.])
def test_fairgrad_and_nash_mtl_defining_equations(alpha):
    "FairGrad (Ban & Ji, ICML 2024): G w = w^(−1/α); Nash-MTL (Navon et al., ICML 2022): (G/|G|_F) α = 1/α."
    for case, J in cases(5):
        if case not in ('normal', 'faces'): continue  # (the others have no solution: see the tests of issue 30)
        G = J @ J.T
        w = FairGradWeighting(alpha)(G)
        torch.testing.assert_close(G @ w, w ** (-1 / alpha), rtol=1e-8, atol=0, msg=case)
        a = NashMTLWeighting(max_norm=0)(G)
        torch.testing.assert_close(G / torch.linalg.matrix_norm(G) @ a, 1 / a, rtol=1e-8, atol=0, msg=case)

def test_sdmgrad_by_hand():
    "SDMGrad (Xiao et al., NeurIPS 2023): `n_iter` projected momentum steps on the simplex, on A = J₁J₂ᵀ/mean(|gᵢ|)²."
    g = torch.Generator().manual_seed(8)
    J1, J2 = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
    A = J1 @ J2.T
    lr, mom, lam, n_iter = 10., 0.5, 0.3, 20
    a = A / (A.diagonal().clamp_min(0).sqrt().mean() ** 2 + 1e-8)
    w, pref, v = torch.full((4,), 0.25, dtype=A.dtype), torch.full((4,), 0.25, dtype=A.dtype), None
    for _ in range(n_iter):
        grad = a @ (w + lam * pref)
        v = grad if v is None else mom * v + grad
        w = project_simplex(w - lr * v)
    torch.testing.assert_close(SDMGradWeighting(lr, mom, n_iter, lam)(A), (w + lam * pref) / (1 + lam))
