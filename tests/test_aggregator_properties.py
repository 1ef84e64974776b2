"""The properties torchjd's own tests check for its aggregators, checked for mtlearn's at torchjd's float32 tolerances:
the output's structure, non-conflicting directions, permutation invariance, linearity under scaling, strong
stationarity, settings that can be read and written (and are checked when written), no autograd graph through the
solver, and the repr. The test matrices are sampled here the way such properties call for (the shapes and scales are
those torchjd uses): random of a given rank, zero, strongly stationary (some positive combination of the rows is 0),
strictly weakly stationary (a non-negative one is, no positive one) and not weakly stationary."""
import pytest, torch
from torch.nn.functional import normalize
from mtlearn.aggregators import *

def _orthonormal_complement(Q, g):
    "A random m×(m−k) matrix with orthonormal columns, orthogonal to the k orthonormal columns of `Q`."
    m, k = Q.shape
    A = torch.randn(m, m - k, generator=g, dtype=torch.float64)
    A = A - Q @ (Q.T @ A)
    return torch.linalg.qr(A)[0]

def _orthonormal(n, g): return _orthonormal_complement(torch.zeros(n, 0, dtype=torch.float64), g)

def _with_left(U, n, rank, g, first=0):
    "A matrix U[:, first:first+rank] S Vᵀ: left singular vectors from `U`, random right ones and singular values."
    S = torch.diag(torch.randn(rank, generator=g, dtype=torch.float64).abs())
    return (U[:, first:first + rank] @ S @ _orthonormal(n, g)[:rank]).float()

def normal(m, n, r, g): return _with_left(_orthonormal(m, g), n, r, g)

def strong(m, n, r, g):
    "Rows orthogonal to a positive vector v: vᵀJ = 0."
    v = normalize(torch.randn(m, generator=g, dtype=torch.float64).abs(), dim=0)[:, None]
    return _with_left(_orthonormal_complement(v, g), n, r, g)

def strictly_weak(m, n, r, g):
    "vᵀJ = 0 for a non-negative v with zeros; a non-negative v' orthogonal to v is a left singular vector, so no positive w gives wᵀJ = 0."
    u, perm = torch.randn(m, generator=g, dtype=torch.float64).abs(), torch.randperm(m, generator=g)
    k = int(torch.randint(1, m, (1,), generator=g))
    v, vp = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    v[perm[:k]], vp[perm[k:]] = normalize(u[perm[:k]], dim=0), normalize(u[perm[k:]], dim=0)
    U1 = torch.stack([v, vp], 1)
    return _with_left(torch.cat([U1, _orthonormal_complement(U1, g)], 1), n, r, g, first=1)

def non_weak(m, n, r, g):
    "A positive left singular vector with a positive singular value: no non-negative v ≠ 0 gives vᵀJ = 0."
    u = normalize(torch.randn(m, generator=g, dtype=torch.float64).abs(), dim=0)[:, None]
    return _with_left(torch.cat([u, _orthonormal_complement(u, g)], 1), n, r, g)

g = torch.Generator().manual_seed(0)
NORMAL = [normal(m, n, r, g) for m, n, r in [(1, 1, 1), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9)]]
ZERO = [torch.zeros(m, n) for m, n in [(1, 1), (4, 3), (9, 11)]]
STATIONARITY_DIMS = [(20, 10, 10), (20, 10, 5), (20, 10, 1), (20, 100, 1), (20, 100, 19)]
STRONG = [strong(*d, g) for d in STATIONARITY_DIMS]
NON_STRONG = [strictly_weak(*d, g) for d in STATIONARITY_DIMS] + [non_weak(*d, g) for d in STATIONARITY_DIMS]
SCALED = [s * J for s in (0., 1e-10, 1e3, 1e5, 1e10, 1e15) for J in NORMAL]
TYPICAL = ZERO + NORMAL + STRONG + NON_STRONG

def ids(ms): return [f'{tuple(J.shape)}#{i}' for i, J in enumerate(ms)]
close = torch.testing.assert_close

def all_aggregators():
    return {'Mean': Mean(), 'Sum': Sum(), 'Random': Random(), 'MGDA': MGDA(), 'UPGrad': UPGrad(), 'DualProj': DualProj(), 'PCGrad': PCGrad(),
            'IMTLG': IMTLG(), 'AlignedMTL': AlignedMTL(), 'CAGrad': CAGrad(0.5), 'NashMTL': NashMTL(), 'ConFIG': ConFIG(),
            'FairGrad': FairGrad(1.), 'CRMOGM': CRMOGM(UPGrad(), alpha=0.5), 'Krum': Krum(1), 'TrimmedMean': TrimmedMean(1),
            'GradVac': GradVac(), 'GradDrop': GradDrop(), 'ExcessMTL': ExcessMTL(), 'PCD': PCD()}
MIN_ROWS = {'Krum': 4, 'TrimmedMean': 3}  # (as torchjd, these are tested on matrices with enough rows)

# ---- structure: a finite vector of J's width, for every matrix
@pytest.mark.parametrize('name', list(all_aggregators()))
def test_expected_structure(name):
    agg = all_aggregators()[name]
    for J in TYPICAL + SCALED:
        if len(J) < MIN_ROWS.get(name, 0): continue
        if name in ('NashMTL', 'CRMOGM', 'GradVac', 'ExcessMTL', 'PCD'): agg.reset()
        d = agg(J)
        assert d.shape == J.shape[1:] and bool(d.isfinite().all()), (name, tuple(J.shape), J.abs().max())

# ---- non-conflicting: no task's loss increases to first order (J d ≥ 0, up to the tolerance)
def assert_non_conflicting(agg, J, atol=4e-4, rtol=4e-4):
    o = J @ agg(J)
    close(o[o >= 0].norm(), o.norm(), atol=atol, rtol=rtol)

@pytest.mark.parametrize('name,make,tol', [('MGDA', MGDA, 4e-4), ('UPGrad', UPGrad, 4e-4), ('DualProj', DualProj, 1e-4),
                                           ('CAGrad c=1', lambda: CAGrad(1.), 4e-4), ('CAGrad c=2', lambda: CAGrad(2.), 4e-4)])
@pytest.mark.parametrize('i', range(len(TYPICAL)))
def test_non_conflicting(name, make, tol, i):
    assert_non_conflicting(make(), TYPICAL[i], tol, tol)

def test_cagrad_float32_at_c_1_on_a_rank_one_stationary_matrix():
    "The exact answer is d = 0 (the ball reaches 0, and only 0 conflicts with no task); float32 rounding of the Gramian once gave about 2·g₀."
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        J = strong(20, 100, 1, g)
        assert CAGrad(1.)(J).norm() <= 1e-3 * J.mean(0).norm()

# ---- permutation invariance: reordering the tasks does not change the direction
@pytest.mark.parametrize('name,make,tol', [('Mean', Mean, 1e-4), ('Sum', Sum, 1e-4), ('MGDA', MGDA, 1e-4), ('UPGrad', UPGrad, 5e-7),
                                           ('DualProj', DualProj, 5e-7), ('IMTLG', IMTLG, 1e-4), ('AlignedMTL', AlignedMTL, 1e-4),
                                           ('ConFIG', ConFIG, 1e-4), ('TrimmedMean', lambda: TrimmedMean(1), 1e-4)])
def test_permutation_invariant(name, make, tol):
    agg, g = make(), torch.Generator().manual_seed(1)
    for J in TYPICAL:
        if len(J) < MIN_ROWS.get(name, 0): continue
        d = agg(J)
        for _ in range(5): close(agg(J[torch.randperm(len(J), generator=g)]), d, atol=tol, rtol=tol)

# ---- linearity under scaling: A(diag(αc₁ + βc₂) J) = α A(diag(c₁) J) + β A(diag(c₂) J) for positive scalings
@pytest.mark.parametrize('name,make,tol', [('Mean', Mean, 1e-4), ('Sum', Sum, 1e-4), ('UPGrad', UPGrad, 6e-2), ('ConFIG', ConFIG, 1e-4),
                                           ('Constant', lambda: None, 1e-4)])
def test_linear_under_scaling(name, make, tol):
    g = torch.Generator().manual_seed(2)
    for J in NON_STRONG:
        agg = make() or Constant(torch.rand(len(J), generator=g))
        for _ in range(5):
            c1, c2, a, b = torch.rand(len(J), generator=g), torch.rand(len(J), generator=g), torch.rand((), generator=g), torch.rand((), generator=g)
            x1, x2, x = agg(torch.diag(c1) @ J), agg(torch.diag(c2) @ J), agg(torch.diag(a * c1 + b * c2) @ J)
            close(x, a * x1 + b * x2, atol=tol, rtol=tol)

# ---- strong stationarity: a zero direction only where the matrix is strongly stationary
@pytest.mark.parametrize('name,make,threshold', [('Mean', Mean, 5e-3), ('Sum', Sum, 5e-3), ('Random', Random, 5e-3),
                                                 ('UPGrad', UPGrad, 5e-3), ('DualProj', DualProj, 3e-3)])
def test_strongly_stationary(name, make, threshold):
    agg = make()
    for J in NON_STRONG: assert agg(J).norm() > threshold, tuple(J.shape)

# ---- no autograd graph through the solver; the direction Jᵀw is linear in J with w held fixed
@pytest.mark.parametrize('name', list(all_aggregators()))
def test_no_graph_through_the_solver(name):
    if name in ('TrimmedMean', 'GradDrop'): pytest.skip('no weights: a coordinate-wise function of J')
    agg = all_aggregators()[name]
    J = torch.randn(4, 5, generator=torch.Generator().manual_seed(4)).requires_grad_()
    d = agg(J)
    w = agg.last_weights
    assert w.grad_fn is None and not w.requires_grad
    d.sum().backward()
    close(J.grad, w[:, None].expand(4, 5))  # d(Σ Jᵀw)/dJ = w for each column: nothing comes from the weights' dependence on J

def test_no_task_gives_no_direction():
    for name, agg in all_aggregators().items():
        if name in MIN_ROWS: continue
        d = agg(torch.zeros(0, 7))
        assert d.shape == (7,) and not d.any(), name

# ---- settings: read, written where they are used, checked when written; the repr shows them
SETTINGS = [(MGDA, {}, 'epsilon', 0.25, -1.), (MGDA, {}, 'max_iters', 3, 0), (MGDA, {}, 'norm_type', 'l2', 'max'),
            (UPGrad, {}, 'norm_eps', 0.1, -1.), (UPGrad, {}, 'reg_eps', 0.1, -1.), (UPGrad, {}, 'max_iters', 7, 0),
            (UPGrad, {}, 'pref_vector', torch.tensor([1., 2.]), torch.ones(2, 2)), (DualProj, {}, 'norm_eps', 0.5, -1.),
            (AlignedMTL, {}, 'scale_mode', 'median', 'max'), (AlignedMTL, {}, 'pref_vector', torch.tensor([2., 1.]), 'x'),
            (CAGrad, {'c': 0.5}, 'c', 1.5, -1.), (CAGrad, {'c': 0.5}, 'norm_eps', 0.3, -1.),
            (NashMTL, {}, 'max_norm', 2., -1.), (NashMTL, {}, 'update_weights_every', 2, 0), (NashMTL, {}, 'optim_niter', 3, 1.5),
            (SDMGrad, {}, 'lr', 2., 0.), (SDMGrad, {}, 'momentum', 0.2, 1.), (SDMGrad, {}, 'lambda_', 0.1, -1.), (SDMGrad, {}, 'n_iter', 2, 0),
            (Krum, {'n_byzantine': 1}, 'n_byzantine', 2, -1), (Krum, {'n_byzantine': 1}, 'n_selected', 2, 0),
            (TrimmedMean, {'trim_number': 1}, 'trim_number', 2, -1), (FairGrad, {'alpha': 1.}, 'alpha', 2., -1.),
            (FairGrad, {'alpha': 1.}, 'max_iters', 5, 0), (ConFIG, {}, 'pref_vector', torch.tensor([1., 3.]), torch.ones(2, 2)),
            (CRMOGM, {'weighting': MGDA()}, 'alpha', 0.3, 1.5), (GradVac, {}, 'beta', 0.2, 1.5), (GradVac, {}, 'eps', 1e-6, -1.),
            (ExcessMTL, {}, 'robust_step_size', 0.5, 0.), (ExcessMTL, {}, 'n_warmup_steps', 2, -1), (MoDo, {}, 'gamma', 0.5, 0.), (MoDo, {}, 'rho', 0.5, -1.),
            (PCD, {}, 'tau', 0.5, 1.5), (PCD, {}, 'beta', 0.5, 1.), (PCD, {}, 'eps', 0., -1e-8), (UPGrad, {}, 'projector', dual_cone_qp, 'quadprog')]

@pytest.mark.parametrize('cls,kw,name,good,bad', SETTINGS, ids=[f'{c.__name__}.{n}' for c, _, n, _, _ in SETTINGS])
def test_settings_are_written_through_and_checked(cls, kw, name, good, bad):
    agg = cls(**kw)
    setattr(agg, name, good)
    for o in (agg, getattr(agg, 'weighting', agg)): assert torch.equal(torch.as_tensor(getattr(o, name)), torch.as_tensor(good)) if isinstance(good, torch.Tensor) else getattr(o, name) == good
    assert f'{name}={good!r}' in repr(agg)
    with pytest.raises(ValueError, match=f'`{name}`'): setattr(agg, name, bad)
    assert (torch.equal(getattr(agg, name), good) if isinstance(good, torch.Tensor) else getattr(agg, name) == good)  # a refused value leaves the old one

def test_a_written_setting_changes_the_result():
    J = torch.tensor([[1., 0.], [-0.5, 1.], [0.3, -1.]])
    agg = MGDA(max_iters=1, solver='frank_wolfe')
    one = agg(J)
    agg.max_iters = 500
    assert not torch.allclose(agg(J), one) and torch.allclose(agg(J), MGDA(max_iters=500, solver='frank_wolfe')(J))
    agg.solver = 'exact'
    assert not torch.allclose(agg(J), MGDA(max_iters=500, solver='frank_wolfe')(J))
    cag = CAGrad(0.1)
    small = cag(J)
    cag.c = 2.
    torch.testing.assert_close(cag(J), CAGrad(2.)(J))
    assert not torch.allclose(small, cag(J))

def test_reprs_as_torchjd_shows_them():
    assert repr(MGDA(norm_type='l2')) == "MGDA(norm_type='l2', epsilon=1e-05, max_iters=250, solver='exact')"
    assert repr(CAGrad(0.5)) == 'CAGrad(c=0.5, norm_eps=0.0001, max_iters=50)'
    assert repr(Mean()) == 'Mean()' and repr(MGDAWeighting()) == "MGDAWeighting(norm_type='none', epsilon=1e-05, max_iters=250, solver='exact')"
    assert repr(UPGrad(sync_free=True)).endswith('sync_free=True)')

def test_any_preference_vector_as_torchjd_takes_it():
    J = torch.randn(2, 4, generator=torch.Generator().manual_seed(5))
    close(UPGrad(pref_vector=[1, 1])(J), 2 * UPGrad()(J))  # the weights as given: [1, 1] is twice the default mean
    close(DualProj(pref_vector=torch.tensor([2., 2.]))(J), 4 * DualProj()(J))  # and [2, 2] four times

# ---- the stateful ones, call after call, against torchjd 0.18.0
def test_stateful_weightings_follow_torchjd_call_after_call():
    tja = pytest.importorskip('torchjd.aggregation')
    g = torch.Generator().manual_seed(6)
    pairs = [(MoDoWeighting(gamma=0.3, rho=0.1), tja.MoDoWeighting(gamma=0.3, rho=0.1)),
             (CRMOGMWeighting(UPGradWeighting(), alpha=0.7), tja.CRMOGMWeighting(tja.UPGradWeighting(), alpha=0.7))]
    for ours, theirs in pairs:
        for _ in range(6):
            J1, J2 = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
            A = J1 @ J2.T if isinstance(ours, MoDoWeighting) else J1 @ J1.T
            close(ours(A), theirs(A), atol=1e-6, rtol=1e-6)
    for warm in (1, 2):  # (with no warm-up, the first call differs on purpose: see test_excess_mtl_first_call_as_the_authors)
        ours, theirs = ExcessMTL(robust_step_size=0.5, n_warmup_steps=warm), tja.ExcessMTL(robust_step_size=0.5, n_warmup_steps=warm)
        for _ in range(6):
            J = torch.randn(3, 7, generator=g, dtype=torch.float64)
            close(ours(J), theirs(J), atol=1e-6, rtol=1e-6)

def test_pcd_follows_torchjd_call_after_call_in_float32_and_keeps_its_promise():
    "Each secondary task gets at least τ of its normalised progress (g̃ⱼᵀd̃ ≥ τ‖g̃ⱼ‖²), unless the constraints cannot all hold and the primary gradient comes out."
    tja = pytest.importorskip('torchjd.aggregation')
    g = torch.Generator().manual_seed(8)
    ours, theirs = PCD(tau=0.2, beta=0.9), tja.PCD(tau=0.2, beta=0.9)
    for _ in range(6):
        J = torch.randn(5, 40, generator=g)
        J[1:3] -= J[0]  # two secondary tasks that conflict with the primary one
        close(ours(J), theirs(J), atol=1e-5, rtol=1e-5)
    for J in NORMAL + STRONG + NON_STRONG:
        pcd = PCD(tau=0.1)
        d = pcd(J)
        if len(J) < 2 or torch.allclose(d, J[0]) or d.norm() == 0: continue
        w, sq = pcd.last_weights, J.double().pow(2).sum(1)
        d_tilde = d.double() / (w[0] * (sq[0] + 1e-8).sqrt())  # d = d̃·‖g₁‖/‖d̃‖, and w₀ = s₀‖g₁‖/‖d̃‖
        progress = (J[1:].double() / (sq[1:, None] + 1e-8).sqrt()) @ d_tilde
        assert bool((progress >= 0.1 * sq[1:] / (sq[1:] + 1e-8) - 5e-3).all()), (tuple(J.shape), progress)  # (float32 Gramians of rank-deficient J: μ up to ~60, torchjd's miss is the same)
    pcd2 = PCD(); pcd2.load_state_dict(pcd.state_dict())  # the moving average is in the checkpoint, at its size
    torch.testing.assert_close(pcd2.weighting.sq_norm_ema, pcd.weighting.sq_norm_ema)

def test_modo_in_the_two_batch_form_and_its_state_in_a_checkpoint():
    g = torch.Generator().manual_seed(7)
    J1, J2, J = (torch.randn(3, 5, generator=g) for _ in range(3))
    modo = MoDo(gamma=0.5)
    d = modo(J1, J2, J)
    lam = project_simplex(torch.full((3,), 1 / 3) - 0.5 * ((J1 @ J2.T) @ torch.full((3,), 1 / 3) + 0.1 / 3))
    close(modo.last_weights, lam); close(d, lam @ J)
    sd = modo.state_dict()
    other = MoDo(gamma=0.5); other.load_state_dict(sd)
    close(other(J1, J2, J), modo(J1, J2, J))
    ex = ExcessMTL(); ex(J1); ex(J2)
    ex2 = ExcessMTL(); ex2.load_state_dict(ex.state_dict())
    close(ex2(J), ex(J))
