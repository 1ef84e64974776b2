"Fisher merging: GGN products against the dense GGN, CG against a direct solve, the merge against its dense formula, bad input."
import warnings
from copy import deepcopy
from functools import partial
import pytest, torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from mtlearn.merge import GGN, cg_solve, fisher_merge, loss_hessian, register_loss_hessian, LossHessian, _Flat, flat_params as flat
from mtlearn.learner import TrainLearner
from mtlearn.datasets import DataLoaders

def mlp(n_in=4, n_out=3, dtype=torch.float64, act=nn.Sigmoid):
    return nn.Sequential(nn.Linear(n_in, 5), nn.ReLU(), nn.Linear(5, 5), act(), nn.Linear(5, n_out)).to(dtype)

def batches(n=10, n_in=4, n_out=3, bs=4, kind='regression', dtype=torch.float64):
    x = torch.randn(n, n_in, dtype=dtype)
    y = {'regression': lambda: torch.randn(n, n_out, dtype=dtype), 'classes': lambda: torch.randint(0, n_out, (n,)),
         'binary': lambda: torch.randint(0, 2, (n, n_out)).to(dtype)}[kind]()
    return [(x[i:i+bs], y[i:i+bs]) for i in range(0, n, bs)]

def dense_ggn(model, dl, loss_func):
    "J^T H J of the whole data set as one batch, H by autograd (no closed form)."
    x, y = (torch.cat(t) for t in zip(*dl))
    fl, theta = _Flat(model), flat(model)
    f = lambda t: functional_call(model, fl.split(t), (x,))
    J = torch.func.jacrev(f)(theta).reshape(-1, len(theta))
    H = torch.func.hessian(lambda o: loss_func(o, y))(f(theta)).reshape(len(J), len(J))
    return J.T @ H @ J

CASES = [(nn.MSELoss(), 'regression'), (nn.MSELoss(reduction='sum'), 'regression'), (F.mse_loss, 'regression'),
         (nn.CrossEntropyLoss(), 'classes'), (partial(F.cross_entropy, reduction='sum'), 'classes'),
         (nn.CrossEntropyLoss(label_smoothing=0.1), 'classes'),
         (nn.BCEWithLogitsLoss(), 'binary'), (nn.BCEWithLogitsLoss(reduction='sum'), 'binary')]

@pytest.mark.parametrize('loss_func,kind', CASES)
def test_ggn_matches_dense(loss_func, kind):
    torch.manual_seed(0)
    model, dl = mlp(), batches(kind=kind)
    G, ggn = dense_ggn(model, dl, loss_func), GGN(model, dl, loss_func)
    for _ in range(3):
        v = torch.randn(len(G), dtype=torch.float64)
        assert ((ggn @ v - G @ v).norm() / (G @ v).norm()) <= 1e-8
    assert ((ggn.diagonal() - G.diagonal()).norm() / G.diagonal().norm()) <= 1e-8
    assert ggn.n_products == 3

def test_ggn_leaves_model_alone():
    model, dl = mlp(), batches()
    model.train()
    sd = deepcopy(model.state_dict())
    GGN(model, dl, F.mse_loss) @ torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    assert model.training and all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())

def test_ggn_in_eval_mode_and_float32():
    "Dropout is off (the product is deterministic) and the product keeps the parameters' dtype."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    ggn, v = GGN(model, batches(dtype=torch.float32), F.mse_loss), torch.randn(67)
    a, b = ggn @ v, ggn @ v
    assert a.dtype == torch.float32 and torch.equal(a, b)

def test_cg_solve_matches_direct_solve_and_counts_products():
    torch.manual_seed(0)
    for n in (1, 5, 40):
        Q = torch.randn(n, n, dtype=torch.float64)
        A, b = Q @ Q.T + 0.1 * torch.eye(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
        calls = []
        x, info = cg_solve(lambda v: (calls.append(1), A @ v)[1], b, rtol=1e-12)
        assert info.converged and len(calls) == info.products == info.iterations + 1
        assert (x - torch.linalg.solve(A, b)).norm() / x.norm() <= 1e-6
        assert info.residual == pytest.approx(((b - A @ x).norm() / b.norm()).item(), rel=1e-6)

def test_cg_solve_x0_and_zero_rhs():
    A = torch.diag(torch.arange(1., 6., dtype=torch.float64))
    x, info = cg_solve(lambda v: A @ v, torch.zeros(5, dtype=torch.float64))
    assert info.iterations == 0 and info.converged and (x == 0).all()
    b = torch.ones(5, dtype=torch.float64)
    x, info = cg_solve(lambda v: A @ v, b, x0=1 / torch.arange(1., 6., dtype=torch.float64))  # the solution
    assert info.iterations == 0 and info.products == 1

def test_cg_solve_warns_at_max_iter_and_on_stall():
    torch.manual_seed(0)
    Q = torch.randn(60, 60)
    A, b = Q @ Q.T + 0.01 * torch.eye(60), torch.randn(60)
    with pytest.warns(UserWarning, match='max_iter=3 reached'):
        _, info = cg_solve(lambda v: A @ v, b, max_iter=3)
    assert not info.converged and info.iterations == 3
    with pytest.warns(UserWarning, match='stalled'):
        _, info = cg_solve(lambda v: A @ v, b, rtol=1e-12, max_iter=100_000)
    assert info.iterations < 5000 and info.residual > 1e-12

def test_cg_solve_bad_input():
    A = torch.eye(3)
    with pytest.raises(ValueError, match='`b` should be a 1-D tensor'): cg_solve(lambda v: v, torch.ones(3, 1))
    with pytest.raises(ValueError, match='`max_iter` should be an int'): cg_solve(lambda v: v, torch.ones(3), max_iter=0)
    with pytest.raises(ValueError, match='not positive definite'): cg_solve(lambda v: -v, torch.ones(3))

def models_and_data(n=3, seed=1):
    torch.manual_seed(seed)
    return [mlp() for _ in range(n)], [batches() for _ in range(n)]

@pytest.mark.parametrize('damp_to', ['zero', 'mean'])
def test_exact_merge_is_the_dense_solve(damp_to):
    models, dls = models_and_data()
    Gs, thetas = [dense_ggn(m, dl, F.mse_loss) for m, dl in zip(models, dls)], [flat(m) for m in models]
    rhs = sum(G @ t for G, t in zip(Gs, thetas)) + (1e-2 * sum(thetas) / 3 if damp_to == 'mean' else 0)
    want = torch.linalg.solve(sum(Gs) + 1e-2 * torch.eye(len(rhs), dtype=torch.float64), rhs)
    merged = fisher_merge(models, dls, F.mse_loss, damping=1e-2, damp_to=damp_to, rtol=1e-12, progress=False)
    assert (flat(merged) - want).norm() / want.norm() <= 1e-6
    assert merged.merge_info.converged

def test_diagonal_merge_is_the_floored_weighted_average():
    models, dls = models_and_data()
    torch.manual_seed(2)
    dls = [batches(kind='classes') for _ in models]
    fs = torch.stack([dense_ggn(m, dl, F.cross_entropy).diagonal() for m, dl in zip(models, dls)]).clamp_min(1e-6)
    thetas = torch.stack([flat(m) for m in models])
    merged = fisher_merge(models, dls, F.cross_entropy, method='diagonal')
    assert torch.allclose(flat(merged), (fs * thetas).sum(0) / fs.sum(0), rtol=1e-9, atol=1e-12)

@pytest.mark.parametrize('method', ['exact', 'diagonal'])
def test_merging_copies_gives_the_model(method):
    models, dls = models_and_data()
    same = fisher_merge([models[0]] * 3, dls, F.mse_loss, method=method, rtol=1e-12, progress=False)
    assert torch.allclose(flat(same), flat(models[0]), atol=1e-9)
    assert same is not models[0]

def test_merge_leaves_inputs_alone_and_averages_buffers():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double() for _ in range(2)]
    for i, m in enumerate(models): m[1].running_mean.fill_(i)
    dls = [batches(), batches()]
    sds = [deepcopy(m.state_dict()) for m in models]
    merged = fisher_merge(models, dls, nn.MSELoss(), progress=False)
    for m, sd in zip(models, sds): assert m.training and all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    assert (merged[1].running_mean == 0.5).all() and merged[1].num_batches_tracked == models[0][1].num_batches_tracked

def test_merge_takes_learners():
    models, dls = models_and_data(2)
    learns = [TrainLearner(m, DataLoaders(dl, dl), nn.MSELoss()) for m, dl in zip(models, dls)]
    a = fisher_merge(learns, progress=False, rtol=1e-10)
    b = fisher_merge(models, dls, nn.MSELoss(), progress=False, rtol=1e-10)
    assert torch.allclose(flat(a), flat(b))

def test_merge_bad_input():
    models, dls = models_and_data(2)
    other = mlp(act=nn.Tanh)
    with pytest.raises(ValueError, match=r"module '3': Sigmoid in models\[0\], Tanh in models\[1\]"):
        fisher_merge([models[0], other], dls, F.mse_loss)
    wider = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match=r"parameter '0.weight': \(5, 4\) in models\[0\], \(6, 4\) in models\[1\]"):
        fisher_merge([models[0], wider], dls, F.mse_loss)
    with pytest.raises(ValueError, match='found 2 models, 3 loaders and 2 loss functions'):
        fisher_merge(models, dls + dls[:1], [F.mse_loss] * 2)
    with pytest.raises(ValueError, match=r'the loader for models\[1\] is empty'):
        fisher_merge(models, [dls[0], []], F.mse_loss)
    for d in (0, -1.):
        with pytest.raises(ValueError, match='`damping` should be > 0'): fisher_merge(models, dls, F.mse_loss, damping=d)
    with pytest.raises(ValueError, match=r"`loss_funcs\[1\]` should be a loss whose Hessian is known \(MSELoss.*register_loss_hessian"):
        fisher_merge(models, dls, [F.mse_loss, F.l1_loss])
    with pytest.raises(ValueError, match='weighted losses'): fisher_merge(models, dls, nn.CrossEntropyLoss(weight=torch.ones(3)))
    with pytest.raises(ValueError, match="`method` should be 'exact' or 'diagonal'"): fisher_merge(models, dls, F.mse_loss, method='kfac')
    with pytest.raises(ValueError, match='all models .* or all Learners'):
        fisher_merge([models[0], TrainLearner(models[1], DataLoaders(dls[1], dls[1]), F.mse_loss)], dls, F.mse_loss)

@pytest.mark.parametrize('method', ['exact', 'diagonal'])
def test_merge_non_finite_fisher(method):
    models, dls = models_and_data(2)
    bad = deepcopy(models[1])
    with torch.no_grad(): bad[0].weight[0, 0] = float('nan')
    sds = [deepcopy(m.state_dict()) for m in (models[0], bad)]
    with pytest.raises(ValueError, match='non-finite'): fisher_merge([models[0], bad], dls, F.mse_loss, method=method, progress=False)
    for m, sd in zip((models[0], bad), sds):
        assert all(torch.equal(v, sd[k]) or (v.isnan() == sd[k].isnan()).all() for k, v in m.state_dict().items())

def test_register_loss_hessian():
    "A new loss taught to the GGN: 3 × MSE (sum), whose Hessian is 6 I."
    def triple_mse(out, y): return 3 * F.mse_loss(out, y, reduction='sum')
    with pytest.raises(ValueError, match='register_loss_hessian'): loss_hessian(triple_mse)
    register_loss_hessian(triple_mse, LossHessian(lambda o, y, v, s: 6 * v, lambda o, y, s: 6 ** 0.5 * torch.eye(o.shape[1], dtype=o.dtype).expand(len(o), -1, -1),
                                              lambda o, r: 1., reduction="sum"))
    torch.manual_seed(0)
    model, dl = mlp(), batches()
    G = dense_ggn(model, dl, triple_mse)
    v = torch.randn(len(G), dtype=torch.float64)
    g = GGN(model, dl, triple_mse)
    assert torch.allclose(g @ v, G @ v) and torch.allclose(g.diagonal(), G.diagonal())
