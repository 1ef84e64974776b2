"MultiTaskGradCB and friends: named tasks, metrics per task, bad input, the NaN guard, mixed precision."
import pytest, torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MeanSquaredError
from mtlearn.learner import TrainLearner, MetricsCB, Callback
from mtlearn.datasets import DataLoaders
from mtlearn.accel import MixedPrecision
from mtlearn.aggregators import Mean, MGDA, UPGrad, SDMGrad
from mtlearn.multitask import MultiTaskModel, MultiTaskLoss, MultiTaskGradCB, TaskMetric, synthetic_tasks, tiny_mtl_model

def batch_dls(batch): return DataLoaders([batch], [batch])

def test_named_tasks_dict_batches_and_metrics():
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Linear(4, 6), {'left': nn.Linear(6, 1), 'right': nn.Linear(6, 1)})
    x, y = torch.randn(8, 4), {'left': torch.randn(8, 1), 'right': torch.randn(8, 1)}
    loss = MultiTaskLoss(left=F.mse_loss, right=F.mse_loss)
    metrics = MetricsCB(mse_left=TaskMetric(MeanSquaredError(), 'left'), mse_right=TaskMetric(MeanSquaredError(), 'right'))
    learn = TrainLearner(model, batch_dls((x, y)), loss, lr=0.1, cbs=[MultiTaskGradCB(MGDA()), metrics])
    learn.fit(1)
    with torch.no_grad(): out = model(x)
    want = F.mse_loss(out['right'], y['right']).item()
    assert learn.history[-1]['valid_mse_right'] == pytest.approx(want, abs=1e-3)
    assert learn.losses.shape == (2,) and torch.allclose(learn.loss, learn.losses.sum())

def test_training_reduces_every_task_loss():
    torch.manual_seed(0)
    dls, model = synthetic_tasks(3, seed=1), tiny_mtl_model(3)
    cb = MultiTaskGradCB(UPGrad(), mode='params')
    learn = TrainLearner(model, dls, MultiTaskLoss(*[F.mse_loss] * 3), lr=0.05, cbs=cb)
    learn.fit(4)
    losses = cb.losses.values()
    n = len(dls.train)
    assert (losses[-n:].mean(0) < losses[:n].mean(0)).all()
    assert cb.weights.values().shape == (4 * n, 3)

def test_features_mode_weights_sum_to_one_for_mgda():
    torch.manual_seed(0)
    cb = MultiTaskGradCB(MGDA(), mode='features')
    TrainLearner(tiny_mtl_model(2), synthetic_tasks(2), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05, cbs=cb).fit(1, valid=False)
    w = cb.weights.values()
    assert torch.allclose(w.sum(1), torch.ones(len(w))) and (w >= 0).all()

def test_bad_input():
    x, y1, y2 = torch.randn(8, 8), torch.randn(8, 1), torch.randn(8, 1)
    model = tiny_mtl_model(2)
    def fit(loss, batch=(x, y1, y2), cb=None, m=model):
        TrainLearner(m, batch_dls(batch), loss, cbs=cb or MultiTaskGradCB(Mean())).fit(1, valid=False)
    with pytest.raises(ValueError, match='the model returned 2 outputs for 3 loss functions'): fit(MultiTaskLoss(*[F.mse_loss] * 3))
    with pytest.raises(ValueError, match="the batch has 1 targets for 2 tasks: none for task\\(s\\) #1"): fit(MultiTaskLoss(F.mse_loss, F.mse_loss), (x, y1))
    named = MultiTaskModel(model.encoder, {'a': model.heads[0], 'b': model.heads[1]})
    with pytest.raises(ValueError, match="no targets for task\\(s\\) 'b'"): fit(MultiTaskLoss(a=F.mse_loss, b=F.mse_loss), (x, {'a': y1}), m=named)
    with pytest.raises(ValueError, match="`shared`='body' is not a submodule"): fit(MultiTaskLoss(F.mse_loss, F.mse_loss), cb=MultiTaskGradCB(Mean(), shared='body'))
    plain = nn.Sequential(nn.Linear(8, 2))
    with pytest.raises(ValueError, match='has no `encoder`'): fit(F.mse_loss, (x, torch.randn(8, 2)), m=plain)
    with pytest.raises(ValueError, match="cannot run in mode='features'"): MultiTaskGradCB(SDMGrad(), mode='features')
    with pytest.raises(ValueError, match="cannot run in mode='features'"): MultiTaskGradCB(lambda J: J.mean(0), mode='features')
    with pytest.raises(ValueError, match="`mode` should be one of 'params', 'features', 'gramian'"): MultiTaskGradCB(Mean(), mode='both')
    with pytest.raises(ValueError, match="`sdm_batches` should be 'split' or 'consecutive'; found 'three'"): MultiTaskGradCB(SDMGrad(), sdm_batches='three')
    with pytest.raises(ValueError, match="is for aggregators that need independent batches, such as SDMGrad; the aggregator is a MGDA"): MultiTaskGradCB(MGDA(), sdm_batches='consecutive')
    with pytest.raises(ValueError, match='needs the per-task losses'): fit(lambda p, *ys: sum(F.mse_loss(a, b) for a, b in zip(p, ys)))
    frozen = tiny_mtl_model(2)
    for p in frozen.encoder.parameters(): p.requires_grad_(False)
    with pytest.raises(ValueError, match='no trainable parameter'): fit(MultiTaskLoss(F.mse_loss, F.mse_loss), m=frozen)

def test_non_finite_loss_names_task_and_step_and_skips_the_step():
    """On the CPU the check comes before the backward pass (guard=True's device path, the step undone, is
    test_mtl_engine's test_guard_true_runs_the_device_path_in_a_fit)."""
    guard = None
    torch.manual_seed(0)
    x = torch.randn(8, 8)
    good, bad = (x, torch.randn(8, 1), torch.randn(8, 1)), (x, torch.randn(8, 1), torch.full((8, 1), float('nan')))
    model = tiny_mtl_model(2)
    learn = TrainLearner(model, DataLoaders([good, bad, good], []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.1,
                         cbs=MultiTaskGradCB(Mean(sync_free=guard is True or None), guard=guard), opt_func=lambda ps, lr: torch.optim.Adam(ps, lr))
    kept = {}
    class Snap(Callback):
        def after_batch(self, learn):
            if learn.iter == 0: kept.update({k: v.clone() for k, v in learn.model.state_dict().items()})
    with pytest.raises(FloatingPointError, match=r'task loss\(es\) 1 not finite at training step 2'): learn.fit(1, valid=False, cbs=Snap())
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())  # the bad step changed nothing

def test_guard_false_leaves_the_fit_unguarded():
    x = torch.randn(8, 8)
    good, bad = (x, torch.randn(8, 1), torch.randn(8, 1)), (x, torch.randn(8, 1), torch.full((8, 1), float('nan')))
    learn = TrainLearner(tiny_mtl_model(2), DataLoaders([good, bad], []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.1,
                         cbs=MultiTaskGradCB(Mean(), guard=False))
    learn.fit(1, valid=False)
    assert not all(torch.isfinite(p).all() for p in learn.model.parameters())

class SqrtAtZero(nn.Module):
    "An encoder whose output is finite but whose gradient is not, for inputs with a zero first column: d sqrt(|p·x|)/dp at x = 0."
    def __init__(self):
        super().__init__()
        self.lin, self.p = nn.Linear(8, 16), nn.Parameter(torch.ones(16))
    def forward(self, x): return self.lin(x) + (self.p * x[:, :1]).abs().sqrt()

@pytest.mark.parametrize('mode', ['params', 'features'])
@pytest.mark.parametrize('guard', [None, True])
def test_a_non_finite_gradient_with_finite_losses_never_reaches_the_parameters(mode, guard):
    "Issue: with every loss finite, an infinite gradient in the shared encoder was applied (the error came a step later)."
    torch.manual_seed(0)
    x = torch.randn(8, 8)
    x0 = x.clone(); x0[:, 0] = 0
    good, bad = (x, torch.randn(8, 1), torch.randn(8, 1)), (x0, torch.randn(8, 1), torch.randn(8, 1))
    model = MultiTaskModel(SqrtAtZero(), [nn.Linear(16, 1), nn.Linear(16, 1)])
    learn = TrainLearner(model, DataLoaders([good, bad, good], []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.1,
                         cbs=MultiTaskGradCB(Mean(sync_free=True), mode=mode, guard=guard), opt_func=torch.optim.Adam)
    kept = {}
    class Snap(Callback):
        def after_batch(self, learn):
            if learn.iter == 0: kept.update({k: v.clone() for k, v in learn.model.state_dict().items()})
    with pytest.raises(FloatingPointError, match=r'the gradient of encoder\.p not finite at training step 2'):
        learn.fit(1, valid=False, cbs=Snap())
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())

def test_mixed_precision_bf16_matches_float32_roughly():
    torch.manual_seed(0)
    x, ys = torch.randn(32, 8), [torch.randn(32, 1) for _ in range(2)]
    grads = {}
    for mp in (False, True):
        torch.manual_seed(1)
        model = tiny_mtl_model(2)
        class Keep(Callback):
            order = MultiTaskGradCB.order + 1
            def before_step(self, learn): grads[mp] = torch.cat([p.grad.flatten() for p in learn.model.parameters()])
        cbs = [MultiTaskGradCB(UPGrad()), Keep()] + ([MixedPrecision()] if mp else [])
        TrainLearner(model, batch_dls((x, *ys)), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0., cbs=cbs).fit(1, valid=False)
    assert torch.isfinite(grads[True]).all() and (grads[True] - grads[False]).norm() <= 0.25 * grads[False].norm()  # bf16 forward: ~10% here

@pytest.mark.parametrize('consecutive', [False, True])
def test_sdmgrad_matches_a_hand_loop_with_torchjd(consecutive):
    "Three parts ξ, ξ′, ζ per step: thirds of each batch (the default) or three consecutive batches (sdm_batches='consecutive');"
    "torchjd's SDMGradWeighting on A = J₁J₂ᵀ, the shared step wᵀJ₃, heads from ζ; step for step."
    jd = pytest.importorskip('torchjd.aggregation')
    from copy import deepcopy
    torch.manual_seed(int(consecutive))
    f64 = torch.float64
    n, bs = (7, 6) if consecutive else (3, 12)
    batches = [(torch.randn(bs, 8, dtype=f64), torch.randn(bs, 1, dtype=f64), torch.randn(bs, 1, dtype=f64)) for _ in range(n)]
    if consecutive: parts = [batches[i:i + 3] for i in range(0, 6, 3)]  # the seventh batch waits for two more
    else: parts = [[tuple(t[idx] for t in b) for idx in torch.arange(bs).tensor_split(3)] for b in batches]
    ours = tiny_mtl_model(2, dtype=f64)
    ref = deepcopy(ours)
    cb = MultiTaskGradCB(SDMGrad(), sdm_batches='consecutive' if consecutive else 'split')
    learn = TrainLearner(ours, DataLoaders(batches, []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.1, cbs=cb)
    weighting, opt = jd.SDMGradWeighting(), torch.optim.SGD(ref.parameters(), 0.1)
    enc, heads = list(ref.encoder.parameters()), list(ref.heads.parameters())
    flat = lambda gs: torch.cat([g.flatten() for g in gs])
    steps = []
    class Each(Callback):
        order = 200
        def after_step(self, learn): steps.append(flat(p.detach().clone() for p in learn.model.parameters()))
    learn.fit(1, valid=False, cbs=Each())
    assert len(steps) == len(parts) == len(cb.weights.values()) and len(cb.losses.values()) == n
    for k, step_parts in enumerate(parts):
        L, J = [], []
        for x, y1, y2 in step_parts:
            out = ref(x)
            L.append(torch.stack([F.mse_loss(out[0], y1), F.mse_loss(out[1], y2)]))
            J.append(torch.stack([flat(torch.autograd.grad(l, enc, retain_graph=True)) for l in L[-1]]))
        w = weighting(J[0] @ J[1].T)
        for p, g in zip(enc, (w @ J[2]).split([p.numel() for p in enc])): p.grad = g.view_as(p).clone()
        for p, g in zip(heads, torch.autograd.grad(L[2].sum(), heads)): p.grad = g
        opt.step(); opt.zero_grad()
        got = flat(p.detach() for p in ref.parameters())
        assert (got - steps[k]).norm() <= 1e-6 * got.norm(), k

def test_sdmgrad_batch_too_small():
    x = torch.randn(2, 8)
    learn = TrainLearner(tiny_mtl_model(2), batch_dls((x, torch.randn(2, 1), torch.randn(2, 1))), MultiTaskLoss(F.mse_loss, F.mse_loss), cbs=MultiTaskGradCB(SDMGrad()))
    with pytest.raises(ValueError, match='this batch has 2 item'): learn.fit(1, valid=False)

def test_multi_fashion_loaders_carry_both_labels():
    from mtlearn.datasets import ds_tensors
    from mtlearn.multitask import load_multi_fashion, MF_LABELS
    dd = load_multi_fashion(n_train=300, n_test=60)
    dls = DataLoaders.from_dd_tensors(dd, 100, y=MF_LABELS)
    x, yl, yr = next(iter(dls.valid))
    assert x.shape == (60, 1, 36, 36) and x.dtype == torch.float32
    assert torch.equal(yl, torch.as_tensor(dd['test']['label_left'])) and torch.equal(yr, torch.as_tensor(dd['test']['label_right']))
    assert not torch.equal(yl, yr)
    with pytest.raises(KeyError, match='`label_middle` is not in the dataset'): DataLoaders.from_dd_tensors(dd, 100, y=('label_left', 'label_middle'))

def test_with_scheduler_recorder_and_gradient_clipping():
    "OneCycleLR stepped per batch, RecorderCB and GradientClip see what an ordinary fit gives them; the clip acts on the aggregated gradient."
    from functools import partial
    from torch.optim import lr_scheduler
    from mtlearn.sgd import BatchSchedCB, RecorderCB, GradientClip
    dls = synthetic_tasks(2, n=256, bs=32)
    torch.manual_seed(0)
    norms = []
    class GradNorm(Callback):
        order = GradientClip.order + 1
        def before_step(self, learn): norms.append(torch.cat([p.grad.flatten() for p in learn.model.parameters()]).norm())
    n = 2 * len(dls.train)
    sched = BatchSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=n))
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'])
    mtl = MultiTaskGradCB(MGDA())
    learn = TrainLearner(tiny_mtl_model(2), dls, MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05, opt_func=torch.optim.Adam,
                         cbs=[mtl, sched, rec, GradientClip(0.05), GradNorm()])
    learn.fit(2)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.05)
    want = []
    s = lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=n)
    for _ in range(n): want.append(opt.param_groups[0]['lr']); opt.step(); s.step()
    torch.testing.assert_close(torch.tensor(rec.recs['lr']), torch.tensor(want))
    assert len(norms) == n == len(mtl.weights.values()) and max(map(float, norms)) <= 0.05 * (1 + 1e-5)

def test_heads_gradients_follow_each_methods_authors():
    "Nash-MTL and ExcessMTL weight the heads' gradients (their authors' code back-propagates Σ wᵢLᵢ), DB-MTL divides them by"
    "Lᵢ (its log), the rest leave them unweighted; `head_grads` overrides."
    from mtlearn.aggregators import NashMTL, ExcessMTL, DBMTL, FairGrad
    from mtlearn.multitask import mtl_backward
    torch.manual_seed(0)
    x, ys = torch.randn(16, 8), [torch.randn(16, 1) for _ in range(2)]
    def heads(agg, **kw):
        torch.manual_seed(1)
        model = tiny_mtl_model(2)
        z = model.encoder(x)
        losses = torch.stack([F.mse_loss(h(z), y) for h, y in zip(model.heads, ys)])
        w = mtl_backward(losses, z, agg, model.encoder.parameters(), **kw)
        return [h.weight.grad.clone() for h in model.heads], w, losses.detach()
    own, _, _ = heads(Mean())
    for agg in (NashMTL(), ExcessMTL()):
        g, w, _ = heads(agg)
        for i in range(2): torch.testing.assert_close(g[i], w[i] * own[i])
        assert not torch.allclose(w, torch.ones_like(w))  # (weights that tell the two apart)
        g, _, _ = heads(type(agg)(), head_grads='own')
        for i in range(2): torch.testing.assert_close(g[i], own[i])
    g, _, l = heads(DBMTL())
    for i in range(2): torch.testing.assert_close(g[i], own[i] / l[i])
    g, _, _ = heads(FairGrad(1.))  # its authors' code back-propagates each loss: unweighted heads
    for i in range(2): torch.testing.assert_close(g[i], own[i])
    with pytest.raises(ValueError, match=r"`head_grads` should be one of 'own', 'weighted', 'log'; found head_grads = 'all'"):
        heads(Mean(), head_grads='all')
    with pytest.raises(ValueError, match=r"`head_grads` should be None \(the aggregator's\) or one of"):
        MultiTaskGradCB(Mean(), head_grads='x')

def test_plots_are_smoothed_titled_with_the_method_and_show_each_tasks_validation():
    "Issue 27: task weights jumped every step, unsmoothed and untitled, and the multi-task run drew no validation curve."
    import matplotlib; matplotlib.use('Agg')
    from mtlearn.learner import ema
    torch.manual_seed(0)
    dls = synthetic_tasks(2, n=256, bs=32)
    cb = MultiTaskGradCB(MGDA())
    learn = TrainLearner(tiny_mtl_model(2), dls, MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05, cbs=cb)
    learn.fit(3)
    assert cb.val_losses.values().shape == (3, 2) and cb.val_steps == [8, 16, 24]
    ax = cb.plot_weights(names=['left', 'right'])
    assert ax.get_title() == 'MGDA: task weights'
    labelled = [l for l in ax.get_lines() if not l.get_label().startswith('_')]
    raw = [l for l in ax.get_lines() if l.get_label().startswith('_')]
    assert [l.get_label() for l in labelled] == ['left', 'right'] and len(raw) == 2 and all(l.get_alpha() < 1 for l in raw)
    w = cb.weights.values()[:, 0].double()
    torch.testing.assert_close(torch.as_tensor(labelled[0].get_ydata()), ema(w, 0.9))
    ax = cb.plot_losses()
    assert ax.get_title() == 'MGDA: task losses'
    valid = [l for l in ax.get_lines() if l.get_label().endswith('(valid)')]
    assert len(valid) == 2 and list(valid[0].get_xdata()) == [8, 16, 24]
    # the validation's task losses: the mean over its batches, of the model as it is after the last epoch
    with torch.no_grad():
        per = torch.stack([learn.loss_func(learn.model.eval()(b[0]), *b[1:]) for b in dls.valid])
    torch.testing.assert_close(cb.val_losses.values()[-1], per.mean(0).float())

def test_the_tradeoff_picture_and_its_bad_input(tmp_path):
    "`read_method_results` takes a method's last epoch; `plot_tradeoff` draws a point per method, or says what is wrong."
    import matplotlib; matplotlib.use('Agg')
    import json
    from mtlearn.multitask import plot_tradeoff, read_method_results
    f = tmp_path/'run.txt'
    rows = [{'method': 'a', 'epoch': 0, 'acc_left': 0.5, 'acc_right': 0.4}, {'method': 'a', 'epoch': 1, 'acc_left': 0.6, 'acc_right': 0.7},
            {'method': 'b', 'epoch': 1, 'acc_left': 0.65, 'acc_right': 0.55}]
    f.write_text('Multi-Fashion built\n' + '\n'.join(json.dumps(r) for r in rows) + '\n\nmethod left right\n')
    res = read_method_results(f)
    assert res == {'a': (0.6, 0.7), 'b': (0.65, 0.55)}
    ax = plot_tradeoff(res, reference='a')
    assert ax.collections[0].get_offsets().tolist() == [[0.6, 0.7], [0.65, 0.55]]
    with pytest.raises(ValueError, match="`results` should map at least one method"): plot_tradeoff({})
    with pytest.raises(ValueError, match=r"`reference` should be one of the methods \['a', 'b'\]; found reference = 'c'"):
        plot_tradeoff(res, reference='c')
