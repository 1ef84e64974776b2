"The multi-task engine: the functional core, its bad input, the guard and the records through their public interfaces, MultiTaskGradCB with the rest of the toolkit, and resuming from a checkpoint."
from copy import deepcopy
import math, pytest, torch
import torch.nn.functional as F
from torch import nn
from mtlearn.learner import TrainLearner, Learner, Callback, DeviceCB, CancelBackwardException
from mtlearn.datasets import DataLoaders
from mtlearn.accel import MixedPrecision, AccelerateCB
from mtlearn.aggregators import Mean, MGDA, UPGrad, SDMGrad, NashMTL
from mtlearn.multitask import (MultiTaskModel, MultiTaskLoss, MultiTaskGradCB, mtl_backward, task_jacobian, DeviceSeries,
                               tiny_mtl_model, synthetic_tasks)
from mtlearn.learner import CountSyncs, GuardCB

f64 = torch.float64
flat = lambda ps: torch.cat([p.detach().flatten() for p in ps])

def definition(model, x, ys, agg, mode='params'):
    "(shared, heads) gradients by the definition: one backward per task."
    enc, hp = list(model.encoder.parameters()), list(model.heads.parameters())
    z = model.encoder(x)
    losses = torch.stack([F.mse_loss(h(z), y) for h, y in zip(model.heads, ys)])
    J = torch.stack([flat(torch.autograd.grad(l, enc, retain_graph=True)) for l in losses])
    heads = flat(torch.autograd.grad(losses.sum(), hp, retain_graph=True))
    if mode == 'params': return agg(J), heads
    Fz = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].flatten() for l in losses])
    return agg.weighting(Fz @ Fz.T) @ J, heads

def grads(model): return flat(p.grad for p in model.encoder.parameters()), flat(p.grad for p in model.heads.parameters())

@pytest.mark.parametrize('mode', ['params', 'features'])
@pytest.mark.parametrize('agg', [Mean, MGDA, UPGrad])
@pytest.mark.parametrize('given', [True, False])
def test_mtl_backward_equals_the_definition(agg, mode, given):
    "Shared and head parameters given, or found in the autograd graph; float64, to rounding."
    torch.manual_seed(0)
    model = tiny_mtl_model(3, dtype=f64)
    x, ys = torch.randn(16, 8, dtype=f64), [torch.randn(16, 1, dtype=f64) for _ in range(3)]
    want = definition(model, x, ys, agg(), mode)
    z = model.encoder(x)
    losses = torch.stack([F.mse_loss(h(z), y) for h, y in zip(model.heads, ys)])
    kw = dict(shared=model.encoder, heads=model.heads) if given else {}
    w = mtl_backward(losses, z, agg(), mode=mode, **kw)
    assert w.shape == (3,)
    for a, b in zip(want, grads(model)): torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)

def test_mtl_backward_adds_to_existing_grads_and_scales():
    "Like backward, it accumulates; with `scale` the .grads are scaled and the aggregator sees true gradients (same weights)."
    torch.manual_seed(0)
    model = tiny_mtl_model(2, dtype=f64)
    x, ys = torch.randn(16, 8, dtype=f64), [torch.randn(16, 1, dtype=f64) for _ in range(2)]
    def run(scale=None):
        z = model.encoder(x)
        return mtl_backward(torch.stack([F.mse_loss(h(z), y) for h, y in zip(model.heads, ys)]), z, MGDA(norm_type='l2'), scale=scale)
    w1 = run(); g1 = torch.cat(grads(model))
    w2 = run(); torch.testing.assert_close(torch.cat(grads(model)), 2 * g1)
    model.zero_grad(set_to_none=True)
    w3 = run(torch.tensor(1024., dtype=f64))
    torch.testing.assert_close(torch.cat(grads(model)), 1024 * g1)
    torch.testing.assert_close(w1, w3); torch.testing.assert_close(w1, w2)

def test_mtl_backward_with_a_list_of_features():
    "Two feature tensors (two shared trunks) give the same gradients as their concatenation."
    torch.manual_seed(0)
    a, b, h1, h2 = (nn.Linear(n, 3).double() for n in (4, 4, 3, 3))
    x, y1, y2 = torch.randn(8, 4, dtype=f64), torch.randn(8, 3, dtype=f64), torch.randn(8, 3, dtype=f64)
    def losses(za, zb): return torch.stack([F.mse_loss(h1(za + zb), y1), F.mse_loss(h2(za * zb), y2)])
    za, zb = a(x), b(x)
    mtl_backward(losses(za, zb), [za, zb], UPGrad(), shared=[*a.parameters(), *b.parameters()])
    got = flat(p.grad for p in [*a.parameters(), *b.parameters()])
    J = torch.stack([flat(torch.autograd.grad(l, [*a.parameters(), *b.parameters()], retain_graph=True)) for l in losses(a(x), b(x))])
    torch.testing.assert_close(got, UPGrad()(J))

def test_mtl_backward_bad_input_writes_nothing():
    torch.manual_seed(0)
    model = tiny_mtl_model(2)
    x, ys = torch.randn(8, 8), [torch.randn(8, 1) for _ in range(2)]
    for p in model.parameters(): p.grad = torch.full_like(p, 7.)
    def call(losses_fn=lambda l: l, feats=None, **kw):
        z = model.encoder(x)
        l = torch.stack([F.mse_loss(h(z), y) for h, y in zip(model.heads, ys)])
        return mtl_backward(losses_fn(l), z if feats is None else feats(z), kw.pop('agg', MGDA()), **kw)
    with pytest.raises(ValueError, match=r'`losses` should be a 1-D tensor, one loss per task; found shape \(1, 2\)'): call(lambda l: l[None])
    with pytest.raises(ValueError, match='`losses` should be a 1-D tensor, one loss per task; found a list'): call(lambda l: list(l))
    with pytest.raises(ValueError, match='`losses` do not depend on `features`'): call(feats=lambda z: model.encoder(x))
    with pytest.raises(ValueError, match='`features` should be the output of the shared parameters; it has no autograd graph'): call(feats=lambda z: z.detach())
    with pytest.raises(ValueError, match=r'`shared` parameters \[0, 1\] \(by position, of 2\) do not reach `features`'): call(shared=model.heads[0])
    with pytest.raises(ValueError, match=r'`shared` parameters \[0, 1\] \(by position, of 2\) do not reach `features`'): call(shared=model.heads[0], mode='features')
    with pytest.raises(ValueError, match="SDMGrad needs the Jacobian .* cannot run in mode='features'"): call(agg=SDMGrad(), mode='features')
    with pytest.raises(ValueError, match=r"`losses` should have shape \(3, m\) for SDMGrad"): call(agg=SDMGrad())
    with pytest.raises(ValueError, match="`mode` should be one of 'params', 'features', 'gramian'; found mode = 'both'"): call(mode='both')
    with pytest.raises(ValueError, match='`aggregator` should be an Aggregator'): call(agg='mgda')
    assert all(torch.equal(p.grad, torch.full_like(p, 7.)) for p in model.parameters())

def test_sdmgrad_parts_and_jacobians_agree():
    "losses of shape (3, m) from one batch's thirds, or `jacobians` of the first two thirds given: the same direction."
    torch.manual_seed(0)
    model = tiny_mtl_model(2, dtype=f64)
    x, ys = torch.randn(12, 8, dtype=f64), [torch.randn(12, 1, dtype=f64) for _ in range(2)]
    def part_losses(i):
        z = model.encoder(x[i])
        return z, torch.stack([F.mse_loss(h(z), y[i]) for h, y in zip(model.heads, ys)])
    idx = torch.arange(12).tensor_split(3)
    z = model.encoder(x)
    L = torch.stack([torch.stack([F.mse_loss(h(z)[i], y[i]) for h, y in zip(model.heads, ys)]) for i in idx])
    w1 = mtl_backward(L, z, SDMGrad(), shared=model.encoder, heads=model.heads)
    g1 = torch.cat(grads(model)); model.zero_grad(set_to_none=True)
    Js = [task_jacobian(l, z, model.encoder) for z, l in map(part_losses, idx[:2])]
    z3, l3 = part_losses(idx[2])
    w2 = mtl_backward(l3, z3, SDMGrad(), shared=model.encoder, heads=model.heads, jacobians=Js)
    torch.testing.assert_close(w1, w2); torch.testing.assert_close(torch.cat(grads(model)), g1)

def test_device_series_is_capped_chunked_and_reads_nothing_until_flushed():
    s = DeviceSeries(max_records=600, chunk=64)
    rows = torch.randn(1000, 3)
    with CountSyncs() as c:
        for r in rows: s.append(r)
    assert c.n == 0 and len(s) >= 600
    torch.testing.assert_close(s.values(), rows[-600:])
    s2 = DeviceSeries(); s2.load_state_dict(s.state_dict())
    torch.testing.assert_close(s2.values(), rows[-600:])
    with pytest.raises(ValueError, match='`max_records` should be a positive int; found max_records = 0'): DeviceSeries(0)

def test_guard_reads_nothing_from_the_device_before_the_step_is_settled():
    "GuardCB's device path (undo=True): its checks of the losses and gradients, and the copies before the step, read no value."
    counts = []
    class Counted(GuardCB):
        def after_loss(self, learn):
            with CountSyncs() as c: super().after_loss(learn)
            counts.append(c.n)
        def before_step(self, learn):
            with CountSyncs() as c: super().before_step(learn)
            counts.append(c.n)
    dls = synthetic_tasks(2, n=64, bs=16)
    learn = TrainLearner(tiny_mtl_model(2), dls, MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.01,
                         cbs=[MultiTaskGradCB(Mean(sync_free=True)), Counted(undo=True)], opt_func=torch.optim.Adam)
    learn.fit(1, valid=False)
    assert len(counts) == 8 and sum(counts) == 0

@pytest.mark.parametrize('agg', [lambda: Mean(sync_free=True), lambda: SDMGrad(sync_free=True), lambda: NashMTL(sync_free=True)])
def test_guard_true_runs_the_device_path_in_a_fit(agg):
    "guard=True on the CPU: no check before the backward pass; the bad step is undone on the device (Adam and the aggregator too)."
    torch.manual_seed(0)
    x = torch.randn(12, 8)
    good, bad = (x, torch.randn(12, 1), torch.randn(12, 1)), (x, torch.randn(12, 1), torch.full((12, 1), float('nan')))
    model, cb = tiny_mtl_model(2), MultiTaskGradCB(agg(), guard=True)
    learn = TrainLearner(model, DataLoaders([good, good, bad, good], []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.1,
                         cbs=cb, opt_func=torch.optim.Adam)
    kept = {}
    class Snap(Callback):
        order = 200
        def after_batch(self, learn):
            if learn.iter == 1:
                kept['model'] = deepcopy(learn.model.state_dict()); kept['opt'] = deepcopy(learn.opt.state_dict()['state'])
                kept['agg'] = deepcopy(cb.agg.state_dict())
    with pytest.raises(FloatingPointError, match=r'task loss\(es\) 1 not finite at training step 3'): learn.fit(1, valid=False, cbs=Snap())
    assert all(torch.equal(v, kept['model'][k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, kept['opt'][i][k]) for i, s in learn.opt.state_dict()['state'].items() for k, v in s.items())
    assert all(torch.equal(v, kept['agg'][k]) for k, v in cb.agg.state_dict().items() if isinstance(v, torch.Tensor))

def test_records_are_bounded():
    dls = synthetic_tasks(2, n=512, bs=16)
    cb = MultiTaskGradCB(Mean(), max_records=50)
    TrainLearner(tiny_mtl_model(2), dls, MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.01, cbs=cb).fit(2, valid=False)
    assert cb.losses.values().shape == (50, 2) and cb.weights.values().shape == (50, 2)

def test_two_callbacks_that_replace_the_backward_are_refused():
    learn = TrainLearner(tiny_mtl_model(2), synthetic_tasks(2), MultiTaskLoss(F.mse_loss, F.mse_loss), cbs=[MultiTaskGradCB(Mean()), MultiTaskGradCB(MGDA())])
    with pytest.raises(ValueError, match='callbacks MultiTaskGradCB, MultiTaskGradCB each replace the training step .backward.'): learn.fit(1)

# ---- combinations: each gives the update computed by hand ----
def hand_step(model, x, ys, agg, lr, autocast=False, clip=None):
    "One SGD step by the definition, the forward pass under bf16 autocast if asked."
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        z = model.encoder(x)
        losses = torch.stack([F.mse_loss(h(z).float(), y) for h, y in zip(model.heads, ys)])
    enc, hp = list(model.encoder.parameters()), list(model.heads.parameters())
    J = torch.stack([flat(torch.autograd.grad(l, enc, retain_graph=True)) for l in losses])
    g = torch.cat([agg(J), flat(torch.autograd.grad(losses.sum(), hp))])
    if clip is not None: g = g * min(1., clip / float(g.norm()))
    with torch.no_grad():
        for p, d in zip(enc + hp, g.split([p.numel() for p in enc + hp])): p -= lr * d.view_as(p)

def run_learner(model, batches, agg, lr, cbs=(), learner=TrainLearner):
    learn = learner(model, DataLoaders(batches, []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=lr, cbs=[MultiTaskGradCB(agg), *cbs])
    learn.fit(1, valid=False)
    return learn

def batches_(n=3, bs=16):
    torch.manual_seed(0)
    return [(torch.randn(bs, 8), torch.randn(bs, 1), torch.randn(bs, 1)) for _ in range(n)]

def test_with_mixed_precision_bf16():
    bs = batches_()
    torch.manual_seed(1); ours = tiny_mtl_model(2); ref = deepcopy(ours)
    run_learner(ours, bs, UPGrad(), 0.1, [MixedPrecision()])
    for x, *ys in bs: hand_step(ref, x, ys, UPGrad(), 0.1, autocast=True)
    torch.testing.assert_close(flat(ours.parameters()), flat(ref.parameters()), rtol=1e-3, atol=1e-4)

class PublishScaler(Callback):
    "A float16-style gradient scaler on the CPU, published the way MixedPrecision does on a GPU."
    def before_fit(self, learn): learn.scaler = self.scaler = torch.amp.GradScaler('cpu', init_scale=2.**12)
    def cleanup_fit(self, learn): learn.scaler = None

def test_with_a_gradient_scaler_and_clipping():
    "The scaler's path of the one mechanism: scaled rows back-propagated, the aggregator on true gradients, GradientClip on unscaled ones."
    from mtlearn.sgd import GradientClip
    bs = batches_()
    torch.manual_seed(1); ours = tiny_mtl_model(2); ref = deepcopy(ours)
    pub = PublishScaler()
    run_learner(ours, bs, MGDA(), 0.1, [pub, GradientClip(0.05)])
    for x, *ys in bs: hand_step(ref, x, ys, MGDA(), 0.1, clip=0.05)
    torch.testing.assert_close(flat(ours.parameters()), flat(ref.parameters()), rtol=1e-4, atol=1e-6)
    assert pub.scaler.get_scale() == 2.**12  # no step was skipped

@pytest.fixture
def fresh_accelerate():
    pytest.importorskip('accelerate')
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True); GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True); GradientState._reset_state()

@pytest.mark.parametrize('precision', ['no', 'bf16'])
@pytest.mark.parametrize('learner', [TrainLearner, Learner])
def test_with_accelerate(fresh_accelerate, precision, learner):
    "AccelerateCB no longer takes the backward pass: the multi-task update is the hand-computed one (the course's Learner + TrainCB too)."
    bs = batches_()
    torch.manual_seed(1); ours = tiny_mtl_model(2); ref = deepcopy(ours)
    learn = run_learner(ours, bs, MGDA(), 0.1, [AccelerateCB(mixed_precision=precision)], learner)
    for x, *ys in bs: hand_step(ref, x, ys, MGDA(), 0.1, autocast=precision == 'bf16')
    torch.testing.assert_close(flat(learn.model.parameters()), flat(ref.parameters()), rtol=1e-3, atol=1e-4)

@pytest.mark.parametrize('agg', [lambda: SDMGrad(), lambda: NashMTL()])
def test_checkpoint_resumes_the_multitask_state_exactly(tmp_path, agg):
    "fit(2) against fit(1), save, a new learner loads, fit(1): the same parameters (Adam, SDMGrad's w, Nash-MTL's α and step in the file)."
    bs = batches_(4, 12)
    def learner():
        torch.manual_seed(1)
        return TrainLearner(tiny_mtl_model(2), DataLoaders(bs, []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.01,
                            opt_func=torch.optim.Adam, cbs=MultiTaskGradCB(agg()))
    whole = learner(); whole.fit(2, valid=False)
    first = learner(); first.fit(1, valid=False); first.save(tmp_path / 'ck.pt')
    second = learner()
    second.load(tmp_path / 'ck.pt')
    second.fit(1, valid=False)
    assert torch.equal(flat(whole.model.parameters()), flat(second.model.parameters()))
    cw, cs = whole.cbs[0], second.cbs[0]
    torch.testing.assert_close(cw.losses.values(), cs.losses.values())
    fresh = learner(); fresh.fit(1, valid=False)
    assert not torch.equal(flat(whole.model.parameters()), flat(fresh.model.parameters()))  # without the checkpoint it differs

def test_capture_preds_with_tuple_and_dict_outputs():
    import mtlearn.augment  # noqa: F401 (adds Learner.capture_preds)
    torch.manual_seed(0)
    x, y1, y2 = torch.randn(10, 8), torch.randn(10, 1), torch.randn(10, 1)
    model = tiny_mtl_model(2)
    learn = TrainLearner(model, DataLoaders([], [(x[:6], y1[:6], y2[:6]), (x[6:], y1[6:], y2[6:])]), MultiTaskLoss(F.mse_loss, F.mse_loss))
    preds, targs = learn.capture_preds()
    with torch.no_grad(): want = model(x)
    assert isinstance(preds, tuple) and all(torch.allclose(p, w) for p, w in zip(preds, want))
    assert torch.equal(targs[0], y1) and torch.equal(targs[1], y2)
    named = MultiTaskModel(model.encoder, {'a': model.heads[0], 'b': model.heads[1]})
    learn = TrainLearner(named, DataLoaders([], [(x[:6], {'a': y1[:6], 'b': y2[:6]}), (x[6:], {'a': y1[6:], 'b': y2[6:]})]), MultiTaskLoss(a=F.mse_loss, b=F.mse_loss))
    preds, targs = learn.capture_preds()
    assert torch.allclose(preds['b'], want[1]) and torch.equal(targs['a'], y1)

def test_with_a_per_batch_schedule_recorder_and_clipping():
    "OneCycleLR stepped per batch, RecorderCB and GradientClip around MGDA with Adam: the update a hand-written loop makes."
    from functools import partial
    from torch.optim import lr_scheduler
    from mtlearn.sgd import BatchSchedCB, RecorderCB, GradientClip
    bs = batches_(5)
    torch.manual_seed(1); ours = tiny_mtl_model(2); ref = deepcopy(ours)
    sched = partial(lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=5)
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'])
    TrainLearner(ours, DataLoaders(bs, []), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05, opt_func=torch.optim.Adam,
                 cbs=[MultiTaskGradCB(MGDA()), BatchSchedCB(sched), rec, GradientClip(0.05)]).fit(1, valid=False)
    opt = torch.optim.Adam(ref.parameters(), 0.05)
    s, lrs = sched(opt), []
    enc, hp = list(ref.encoder.parameters()), list(ref.heads.parameters())
    for x, *ys in bs:
        lrs.append(opt.param_groups[0]['lr'])
        z = ref.encoder(x)
        losses = torch.stack([F.mse_loss(h(z), y) for h, y in zip(ref.heads, ys)])
        J = torch.stack([flat(torch.autograd.grad(l, enc, retain_graph=True)) for l in losses])
        for p, g in zip(enc + hp, torch.cat([MGDA()(J), flat(torch.autograd.grad(losses.sum(), hp))]).split([p.numel() for p in enc + hp])): p.grad = g.view_as(p)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        opt.step(); opt.zero_grad(); s.step()
    assert rec.recs['lr'] == pytest.approx(lrs)
    torch.testing.assert_close(flat(ours.parameters()), flat(ref.parameters()), rtol=1e-4, atol=1e-6)
