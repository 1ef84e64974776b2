"""The Gramian engine: equal to the explicit J Jᵀ (float64) and to torchjd's Engine (float32); `gramian_backward` equal to
building J, and to torchjd's `autojac.backward` + `jac_to_grad`; the refusals; `IWRMCB` in `learn.fit()`."""
import inspect, warnings
import pytest, torch
import torch.nn.functional as F
from torch import nn
import mtlearn.aggregators as aggs
from mtlearn.aggregators import *
from mtlearn.conv import conv
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.gramian import GramianEngine, IWRMCB, backward, gramian_backward, jac
from mtlearn.init import get_model
from mtlearn.learner import *
from mtlearn.resnet import ResBlock


class Scaled(nn.Module):
    "A parameter used directly by the module, beside a child module."
    def __init__(self, n):
        super().__init__()
        self.a, self.lin = nn.Parameter(torch.randn(n)), nn.Linear(n, 3)
    def forward(self, x): return self.lin(torch.tanh(x * self.a))

class TwoInputs(nn.Module):
    "A module called with two tensors and a keyword: the engine recomputes it with all of them."
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3))
    def forward(self, x, y, scale=1.): return scale * (x @ self.w) * y

class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.lin = TwoInputs(), nn.Linear(3, 2)
    def forward(self, x): return self.lin(self.inner(x, x[:, :3].sin(), scale=2.))

def course_cnn(norm=None):
    torch.manual_seed(0)
    return get_model(norm=norm).cpu(), torch.randn(6, 1, 28, 28)

MODELS = {
    'mlp': lambda: (nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), torch.randn(6, 6)),
    'course-cnn': course_cnn,
    'course-cnn-bn': lambda: course_cnn(nn.BatchNorm2d),
    'resblock': lambda: (nn.Sequential(ResBlock(1, 4, stride=2), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)),
                         torch.randn(6, 1, 28, 28)),
    'embedding': lambda: (nn.Sequential(nn.Embedding(30, 5), nn.Flatten(), nn.Linear(20, 2)), torch.randint(0, 30, (6, 4))),
    'custom': lambda: (Scaled(6), torch.randn(6, 6)),
    'two-inputs': lambda: (Pair(), torch.randn(6, 5)),
    'sequence': lambda: (nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 2)), torch.randn(6, 5, 4)),
    # few parameters, large activations, BatchNorm: the general path takes the rows in chunks
    'wide-bn': lambda: (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(2 * 8 * 8, 2)), torch.randn(6, 1, 8, 8)),
    # a conv whose 2×2 output makes the product of input and output Gramians cheaper than per-sample gradients
    'small-conv': lambda: (nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3)),
                           torch.randn(6, 16, 4, 4)),
}

def per_sample(o, k): return o.flatten(1).pow(2).sum(1) if k == 1 else o.flatten(1)[:, :k].pow(2)

def explicit(losses, model):
    J = torch.cat([j.flatten(1) for j in jac(losses, list(model.parameters()), retain_graph=True)], 1)
    return J @ J.T

def f64(model, x): return model.double(), x.double() if x.is_floating_point() else x

@pytest.mark.parametrize('k', [1, 2])
@pytest.mark.parametrize('name', MODELS)
def test_equals_explicit_gramian(name, k):
    model, x = f64(*MODELS[name]())
    with GramianEngine(model) as e, warnings.catch_warnings():
        warnings.simplefilter('ignore')  # (BatchNorm: the general path, said in a warning tested below)
        losses = per_sample(model(x), k)
        G = e.gramian(losses)
    torch.testing.assert_close(G, explicit(losses, model), rtol=0, atol=1e-10 * G.abs().max().item())
    assert e.path == ('general' if name.endswith('-bn') else 'per-sample')

def test_the_general_path_in_chunks_of_rows():
    "Few parameters, large activations, BatchNorm: with a small `chunk_bytes` the rows go in chunks (of 2, then 1)."
    model, x = f64(*MODELS['wide-bn']())
    with GramianEngine(model, chunk_bytes=2 * 1548 * 8) as e, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        losses = model(x).pow(2).sum(1)
        G = e.gramian(losses)
    torch.testing.assert_close(G, explicit(losses, model), rtol=0, atol=1e-10 * G.abs().max().item())
    with pytest.raises(ValueError, match='`chunk_bytes` should be a positive int'): GramianEngine(model, chunk_bytes=0)

@pytest.mark.parametrize('k', [1, 2])
@pytest.mark.parametrize('name', MODELS)
def test_backward_from_the_pieces_equals_a_backward_pass(name, k):
    "`engine.backward(w)` (no second backward pass) adds what `losses.backward(w)` adds, every path and piece."
    grads = []
    for how in ('pieces', 'autograd'):
        torch.manual_seed(0)
        model, x = f64(*MODELS[name]())
        with GramianEngine(model) as e, warnings.catch_warnings():
            warnings.simplefilter('ignore')
            losses = per_sample(model(x), k)
            G = e.gramian(losses)
            w = torch.linspace(0.5, 1.5, losses.numel(), dtype=G.dtype)
            if how == 'pieces':
                e.backward(w, scale=torch.tensor(2., dtype=G.dtype))
                with pytest.raises(ValueError, match='call `gramian` first'): e.backward(w)  # (once per Gramian)
            else: (losses * 2).backward(w.view_as(losses))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)

def test_backward_from_the_pieces_needs_every_parameter_in_the_engine():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with GramianEngine(model[2]) as e:  # the first layer's parameters are outside the engine
        losses = model(torch.randn(5, 4)).pow(2).sum(1)
        e.gramian(losses)
        with pytest.raises(ValueError, match='outside the engine'): e.backward(torch.ones(5))
    with GramianEngine(model[2]) as e:  # gramian_backward then takes a backward pass: every parameter gets its part
        losses = model(torch.randn(5, 4)).pow(2).sum(1)
        gramian_backward(losses, MeanWeighting(), e)
    assert all(p.grad is not None for p in model.parameters())

@pytest.mark.parametrize('name', ['mlp', 'course-cnn', 'course-cnn-bn', 'custom'])
def test_any_losses_take_the_general_path(name):
    "batch_dim=None: losses over the whole batch (one per task), each row a backward pass."
    model, x = f64(*MODELS[name]())
    with GramianEngine(model, batch_dim=None) as e:
        losses = model(x).flatten(1)[:, :3].pow(2).mean(0)
        G = e.gramian(losses)
    torch.testing.assert_close(G, explicit(losses, model), rtol=0, atol=1e-10 * G.abs().max().item())

def test_batchnorm_is_said_by_name_and_its_running_statistics_move_once():
    model, x = f64(*course_cnn(nn.BatchNorm2d))
    bn = model[0][1]
    with GramianEngine(model) as e:
        losses = model(x).pow(2).sum(1)
        seen = bn.running_mean.clone(), int(bn.num_batches_tracked)
        with pytest.warns(UserWarning, match=r"BatchNorm2d '0\.1' normalises with the batch's statistics.*general path"):
            e.gramian(losses)
    assert torch.equal(bn.running_mean, seen[0]) and int(bn.num_batches_tracked) == seen[1] == 1
    model.eval()  # running statistics: the samples are independent again
    with GramianEngine(model) as e, warnings.catch_warnings():
        warnings.simplefilter('error')
        losses = model(x).pow(2).sum(1)
        torch.testing.assert_close(e.gramian(losses), explicit(losses, model))
        assert e.path == 'per-sample'

torchjd = pytest.importorskip('torchjd')
from torchjd.autogram import Engine
import torchjd.aggregation as jd
from torchjd.autojac import backward as jd_backward, jac_to_grad

@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('name', ['mlp', 'course-cnn', 'course-cnn-bn', 'resblock', 'embedding', 'custom', 'small-conv'])
def test_equals_torchjd_engine(name, k):
    "float32; torchjd refuses BatchNorm with batch_dim, so the BatchNorm model is compared with its batch_dim=None."
    model, x = MODELS[name]()
    theirs_model = __import__('copy').deepcopy(model)  # (each engine hooks its own copy)
    bn = name == 'course-cnn-bn'
    with GramianEngine(model) as e, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        G = e.gramian(per_sample(model(x), k))
    their = Engine(theirs_model, batch_dim=None if bn else 0)
    Gt = their.compute_gramian(per_sample(theirs_model(x), k))
    torch.testing.assert_close(G, Gt, rtol=1e-4, atol=1e-5 * Gt.abs().max().item())

# every aggregator whose weights come from the Gramian, with the arguments it needs
NEEDS = {Constant: (torch.tensor([0.3, 0.7, 1.0, 0.5]),), CAGrad: (0.5,), Krum: (1,), FairGrad: (0.5,),
         CRMOGM: (UPGradWeighting(),)}
def gramian_aggregators():
    out = []
    for name in aggs.__all__:
        c = getattr(aggs, name)
        if not (inspect.isclass(c) and issubclass(c, Aggregator)) or c in (Aggregator, WeightedAggregator): continue
        if not c.from_gramian: continue
        agg = c(*NEEDS.get(c, ()))
        if agg.deterministic: out.append(agg)
    return out

def train_losses(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.randn(4, 5), torch.randn(4)

@pytest.mark.parametrize('agg', gramian_aggregators(), ids=str)
def test_gramian_backward_equals_building_the_jacobian(agg):
    grads = []
    for how in ('engine', 'jacobian'):
        model, x, y = train_losses()
        engine = GramianEngine(model) if how == 'engine' else None
        losses = (model(x).squeeze(1) - y) ** 2
        agg.reset()
        if how == 'engine': w = gramian_backward(losses, agg, engine)
        else: w = backward(losses, agg)
        grads.append((torch.cat([p.grad.flatten() for p in model.parameters()]), w))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)

PAIRS = [(Mean(), jd.Mean()), (UPGrad(), jd.UPGrad()), (DualProj(), jd.DualProj()), (IMTLG(), jd.IMTLG()),
         (AlignedMTL(), jd.AlignedMTL()), (MGDA(epsilon=1e-3, max_iters=100, solver='frank_wolfe'), jd.MGDA(epsilon=1e-3, max_iters=100)),
         (CAGrad(0.5), jd.CAGrad(0.5)), (Sum(), jd.Sum())]

@pytest.mark.parametrize('ours,theirs', PAIRS, ids=[str(a) for a, _ in PAIRS])
def test_updates_equal_torchjd_autojac(ours, theirs):
    model, x, y = train_losses(1)
    engine = GramianEngine(model)  # (before the forward pass, which it records)
    gramian_backward((model(x).squeeze(1) - y) ** 2, ours, engine)
    mine = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    jd_backward((model(x).squeeze(1) - y) ** 2)
    jac_to_grad(list(model.parameters()), theirs)
    for a, p in zip(mine, model.parameters()): torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)

def test_refusals_name_what_is_wrong():
    model = nn.Sequential(nn.Linear(4, 3))
    with GramianEngine(model) as e:
        out = model(torch.randn(5, 4))
        with pytest.raises(ValueError, match='0-d tensor'): e.gramian(out.sum())
        with pytest.raises(ValueError, match='no autograd graph'): e.gramian(torch.ones(5))
        with pytest.raises(ValueError, match='do not depend on the parameters'): e.gramian(torch.ones(5, requires_grad=True) * 2)
        with pytest.raises(ValueError, match="losses' 4 samples"): e.gramian(out[:4].sum(1))
        with pytest.raises(ValueError, match='`reduce` should be'): e.gramian(out.sum(1), reduce='sum')
        with pytest.raises(ValueError, match='should be a Weighting'): gramian_backward(out.sum(1), 3, e)
        with pytest.raises(ValueError, match='TrimmedMean reads the Jacobian'): gramian_backward(out.sum(1), TrimmedMean(1), e)
        with pytest.raises(ValueError, match='SDMGradWeighting weighs A'): gramian_backward(out.sum(1), SDMGrad(), e)
        assert torch.isfinite(e.gramian(out.sum(1))).all()  # the refusals kept the recorded calls
        with pytest.raises(ValueError, match='create the engine before the forward pass'): e.gramian(out.sum(1))
    class Direct(nn.Module):  # reads its second child's weight instead of calling it
        def __init__(self):
            super().__init__()
            self.pre, self.lin = nn.Linear(4, 4), nn.Linear(4, 3)
        def forward(self, x): return self.pre(x) @ self.lin.weight.T
    model = Direct()
    with GramianEngine(model) as e:
        with pytest.raises(ValueError, match="'lin.weight' reaches `losses` without a call"): e.gramian(model(torch.randn(5, 4)).sum(1))
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    with GramianEngine(model) as e:  # the ReLU changes the first layer's output in place: its gradient is still right
        losses = model(x).pow(2).sum(1)
        torch.testing.assert_close(e.gramian(losses), explicit(losses, model))
    class AddInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
        def forward(self, x):
            x = x * 1
            y = self.lin(x)
            x.add_(1)  # changes what `lin` read, after it read it
            return y.sum(1) + x.sum(1)
    model = AddInPlace()
    with GramianEngine(model) as e:
        with pytest.raises(ValueError, match="input of Linear 'lin' was modified in place"): e.gramian(model(x))
    with pytest.raises(ValueError, match='`losses` should have at least one dimension'): jac(torch.tensor(1.))
    with pytest.raises(ValueError, match='`params` should be tensors that require grad'): jac(model(x), [torch.ones(2)])
    with pytest.raises(ValueError, match='`batch_dim` should be 0'): GramianEngine(model, batch_dim=2)
    with pytest.raises(ValueError, match='no parameter that requires grad'): GramianEngine(nn.ReLU())

def test_no_host_read_per_gramian():
    "The engine and the weighting read nothing back (CountSyncs counts the device-to-host reads a step would make)."
    model, x = course_cnn()
    e, wt = GramianEngine(model), UPGradWeighting(sync_free=True)
    losses = F.cross_entropy(model(x), torch.tensor([1, 2, 3, 4, 5, 6]), reduction='none')
    with CountSyncs() as c: gramian_backward(losses, wt, e)
    assert c.n == 0


# IWRMCB in learn.fit()
def iwrm_learner(weighting, cbs=(), n=48, bs=12, norm=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(conv(1, 4, norm=norm), conv(4, 8, norm=norm), nn.Flatten(), nn.Linear(8 * 3 * 3, 4))
    dls = DataLoaders(TensorDataLoader(x, y, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(1)),
                      TensorDataLoader(x[:12], y[:12], batch_size=6))
    learn = Learner(model, dls, nn.CrossEntropyLoss(reduction='none'), lr=0.1, cbs=[TrainCB(), MetricsCB(), IWRMCB(weighting), *cbs])
    learn.logging = False
    return learn, (x, y)

def by_hand(weighting, n=48, bs=12, epochs=2, seed=0):
    "The same training as a loop of our own: the engine, the weights, one backward of the weighted losses."
    learn, (x, y) = iwrm_learner(weighting, n=n, bs=bs, seed=seed)
    model, opt, e = learn.model, torch.optim.SGD(learn.model.parameters(), lr=0.1), GramianEngine(learn.model)
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(bs):
            losses = F.cross_entropy(model(x[idx]), y[idx], reduction='none')
            gramian_backward(losses, weighting, e)
            opt.step(); opt.zero_grad()
    return torch.cat([p.detach().flatten() for p in model.parameters()])

def flat(m): return torch.cat([p.detach().flatten() for p in m.parameters()])

def test_iwrmcb_trains_as_the_loop_by_hand_and_records_its_weights():
    learn, _ = iwrm_learner(UPGradWeighting())
    learn.fit(2)
    torch.testing.assert_close(flat(learn.model), by_hand(UPGradWeighting()), rtol=0, atol=1e-6)
    cb = next(c for c in learn.cbs if isinstance(c, IWRMCB))
    v = cb.weights.values()
    assert v.shape == (8, 4)  # 2 epochs × 4 steps: min, max, sum, effective count
    assert (v[:, 0] <= v[:, 1]).all() and (v[:, 3] <= 12 + 1e-4).all() and (v[:, 3] >= 1 - 1e-4).all()
    assert set(cb.log_step()) == {'iwrm/weight_min', 'iwrm/weight_max', 'iwrm/weight_sum'}
    assert list(cb.log_figures()) == ['iwrm_weights'] and cb.log_figures()['iwrm_weights']() is not None
    _, (x, y) = iwrm_learner(UPGradWeighting())
    with torch.no_grad(): mean = F.cross_entropy(learn.model(x[:12]), y[:12]).item()
    assert abs(learn.history[-1]['valid_loss'] - mean) < 1e-5  # the metrics see the batch's mean loss, not the sum

def test_iwrmcb_needs_one_loss_per_sample_and_a_gramian_weighting():
    learn, _ = iwrm_learner(UPGradWeighting())
    learn.loss_func = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="reduction='none'"): learn.fit(1)
    with pytest.raises(ValueError, match='GradDrop reads the Jacobian'): IWRMCB(GradDrop())
    with pytest.raises(ValueError, match='`reduce` should be'): IWRMCB(UPGrad(), reduce='sum')

def test_iwrmcb_with_sdmgrad_splits_each_batch_in_three():
    learn, (x, y) = iwrm_learner(SDMGrad(), n=36, bs=12)
    learn.fit(1, valid=False)
    model, e, wt = iwrm_learner(SDMGrad(), n=36, bs=12)[0].model, None, SDMGradWeighting()
    e, opt = GramianEngine(model), torch.optim.SGD(model.parameters(), lr=0.1)
    for idx in torch.randperm(36, generator=torch.Generator().manual_seed(1)).split(12):
        losses = F.cross_entropy(model(x[idx]), y[idx], reduction='none')
        G = e.gramian(losses)
        w = wt(G[:4, 4:8])  # A = J₁J₂ᵀ: the first third's rows against the second's
        losses[8:].backward(w)
        opt.step(); opt.zero_grad()
    torch.testing.assert_close(flat(learn.model), flat(model), rtol=0, atol=1e-6)

def test_iwrmcb_resumes_mid_epoch_exactly(tmp_path):
    "Saved every 4 training batches of 3 per epoch: the last save is mid-epoch 1; resumed there, the run ends as if never stopped."
    from mtlearn.tracker import SaveModelCB
    whole, _ = iwrm_learner(SDMGrad(), n=36, bs=12, cbs=[SaveModelCB(tmp_path / 'm.pt', every_batches=4)])
    whole.fit(2)
    rest, _ = iwrm_learner(SDMGrad(), n=36, bs=12, seed=5, cbs=[SaveModelCB(tmp_path / 'again.pt', every_batches=4)])
    rest.fit(2, resume=tmp_path / 'm_last.pt')
    torch.testing.assert_close(flat(rest.model), flat(whole.model), rtol=0, atol=0)
    a, b = (next(c for c in l.cbs if isinstance(c, IWRMCB)) for l in (rest, whole))
    torch.testing.assert_close(a.weights.values(), b.weights.values())
    torch.testing.assert_close(a.weighting.w, b.weighting.w)  # SDMGrad's running weights came back

def test_iwrmcb_with_mixed_precision_and_batchnorm():
    from mtlearn.accel import MixedPrecision
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # (BatchNorm: the general path)
        learn, _ = iwrm_learner(UPGradWeighting(), cbs=[MixedPrecision(dtype=torch.bfloat16)], norm=nn.BatchNorm2d)
        learn.fit(1)
    assert torch.isfinite(flat(learn.model)).all()
    assert learn.history[-1]['train_loss'] < 2

def test_iwrmcb_and_multitaskgradcb_cannot_both_take_the_backward():
    from mtlearn.multitask import MultiTaskGradCB
    learn, _ = iwrm_learner(UPGradWeighting(), cbs=[MultiTaskGradCB(UPGrad())])
    with pytest.raises(Exception, match='backward'): learn.fit(1)


# MultiTaskGradCB(mode='gramian'): the exact weights from the engine's Gramian, J never built
def mtl_learner(mode, agg, cbs=(), norm=None, dtype=torch.float64):
    from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, MultiTaskModel
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g, dtype=dtype)
    ys = [torch.randn(48, 1, generator=g, dtype=dtype) for _ in range(3)]
    torch.manual_seed(0)
    enc = nn.Sequential(conv(1, 4, norm=norm), conv(4, 8, norm=norm), nn.Flatten())
    model = MultiTaskModel(enc, [nn.Linear(32, 1) for _ in range(3)]).to(dtype)
    dls = DataLoaders(TensorDataLoader(x, *ys, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(1)), [])
    cb = MultiTaskGradCB(agg, mode=mode)
    learn = TrainLearner(model, dls, MultiTaskLoss(*[F.mse_loss] * 3), lr=0.05, cbs=[cb, *cbs])
    learn.logging = False
    learn.fit(2, valid=False)
    return flat(learn.model), cb.weights.values()

@pytest.mark.parametrize('norm', [None, nn.BatchNorm2d], ids=['plain', 'batchnorm'])
@pytest.mark.parametrize('agg', [UPGrad(), MGDA(), DualProj()], ids=str)
def test_multitask_gramian_mode_trains_as_params_mode(agg, norm):
    a, b = mtl_learner('params', agg, norm=norm), mtl_learner('gramian', agg, norm=norm)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-9)

def test_multitask_gramian_mode_refusals_and_mixed_precision():
    from mtlearn.accel import MixedPrecision
    from mtlearn.multitask import MultiTaskGradCB, mtl_backward
    with pytest.raises(ValueError, match="cannot run in mode='gramian'"): MultiTaskGradCB(SDMGrad(), mode='gramian')
    z = nn.Linear(3, 4)(torch.randn(5, 3))
    losses = torch.stack([z[:, 0].pow(2).mean(), z[:, 1].pow(2).mean()])
    with pytest.raises(ValueError, match="mode='gramian' needs `engine`"): mtl_backward(losses, z, UPGrad(), mode='gramian')
    p32 = mtl_learner('params', UPGrad(), dtype=torch.float32)[0]
    amp = mtl_learner('gramian', UPGrad(), cbs=[MixedPrecision(dtype=torch.bfloat16)], dtype=torch.float32)[0]
    # bfloat16 rounding moves it by 6e-4 here; Mean instead of UPGrad would move it by 3.3e-3
    assert torch.isfinite(amp).all() and (amp - p32).abs().max() < 1.5e-3

def test_patches_are_unfolds():
    "The engine's strided copy of a convolution's patches equals `F.unfold`, for any kernel, stride, padding, dilation."
    from mtlearn.gramian import _patches
    for k, s, p, d in [((3, 3), (2, 2), (1, 1), (1, 1)), ((5, 3), (1, 2), (2, 0), (1, 2)), ((1, 1), (1, 1), (0, 0), (1, 1))]:
        m, x = nn.Conv2d(3, 4, k, stride=s, padding=p, dilation=d), torch.randn(2, 3, 11, 9)
        assert torch.equal(_patches(x, m), F.unfold(x, k, d, p, s).transpose(1, 2))
