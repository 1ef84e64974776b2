import random
from functools import partial
import pytest, torch
import fastcore.all as fc
import torch.nn.functional as F
from torch import nn
from mtlearn.activations import *
from mtlearn.init import *
from mtlearn.learner import TrainLearner, Callback
from test_learner import toy_dls

def mlp(): return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

def test_activation_stats_bounded_and_every():
    a = ActivationStats(fc.risinstance(nn.ReLU), every=3, max_records=2)
    TrainLearner(mlp(), toy_dls(n=40, bs=4), F.cross_entropy, cbs=[a]).fit(1)  # 10 batches: iters 0, 3, 6, 9 recorded
    assert len(a) == 2 and [len(h.stats[0]) for h in a] == [2, 2]
    b = ActivationStats(fc.risinstance(nn.ReLU))
    TrainLearner(mlp(), toy_dls(n=40, bs=4), F.cross_entropy, cbs=[b]).fit(1)
    h = b.hooks[0]
    assert len(h.stats[0]) == 10 and get_hist(h).shape == (40, 10) and get_min(h).shape == (10,)
    assert all(isinstance(x, torch.Tensor) for x in h.stats[1])  # kept as tensors until read
    with pytest.raises(ValueError, match='`every`'): ActivationStats(every=0)
    with pytest.raises(ValueError, match='`max_records`'): ActivationStats(max_records=0)

def test_hooks_removed_when_fit_fails():
    model = mlp()
    class Boom(Callback):
        def after_loss(self, learn): raise RuntimeError('boom')
    a = ActivationStats(fc.risinstance(nn.ReLU))
    with pytest.raises(RuntimeError): TrainLearner(model, toy_dls(), F.cross_entropy, cbs=[a, Boom()]).fit(1)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())

def test_filter_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match='`mod_filter` matched no module'):
        TrainLearner(mlp(), toy_dls(), F.cross_entropy, cbs=[ActivationStats(fc.risinstance(nn.Conv2d))]).fit(1)

def test_lsuv_converges_and_refuses_dead_layers():
    torch.manual_seed(0)
    gr = lambda: nn.Sequential(nn.Linear(3, 8), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(8, 2))  # mean 0 needs a shifted ReLU
    model, xb = gr(), torch.randn(256, 3)
    lsuv_init(model, model[1], model[0], xb)
    with Hooks([model[1]], partial(append_stats, stat_items=None)) as hs:  # the whole batch, as LSUV saw it
        model(xb)
        assert abs(hs[0].stats[0][0]) < 1e-2 and abs(hs[0].stats[1][0] - 1) < 1e-2
    dead = mlp()
    with torch.no_grad(): dead[0].weight.zero_(); dead[0].bias.fill_(-1)
    with pytest.raises(ValueError, match='cannot be rescaled'): lsuv_init(dead, dead[1], dead[0], xb)
    fresh = gr()
    with pytest.raises(RuntimeError, match='no convergence in max_iters=1'): lsuv_init(fresh, fresh[1], fresh[0], xb, max_iters=1)

def test_general_relu_and_conv():
    x = torch.linspace(-2, 2, 5)
    torch.testing.assert_close(GeneralRelu(leak=0.1, sub=0.4, maxv=1.)(x), torch.tensor([-0.6, -0.5, -0.4, 0.6, 1.0]))
    assert conv(1, 4, norm=nn.BatchNorm2d)[0].bias is not None  # the course's model: its bias test never fires
    assert conv(1, 4, norm=nn.BatchNorm2d, bias='auto')[0].bias is None and conv(1, 4, bias='auto')[0].bias is not None
    with pytest.raises(ValueError, match="`bias` should be None, True, False or 'auto'"): conv(1, 4, bias=1)
    assert len(conv(1, 4, act=None)) == 1
    with pytest.raises(TypeError, match='`tfm`'): BatchTransformCB(3)

def test_batch_transform_cb():
    seen = []
    class S(Callback):
        order = 1
        def before_batch(self, learn): seen.append(learn.batch[0].abs().max().item())
    TrainLearner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=[BatchTransformCB(lambda b: (b[0]*0, b[1]), on_val=False), S()]).fit(1)
    assert seen[:2] == [0, 0] and seen[2] > 0

from mtlearn.augment import *

def test_augmentations_new_tensors_or_in_place_as_the_course():
    torch.manual_seed(0); random.seed(0)
    x = torch.arange(2*1*6*6, dtype=torch.float).reshape(2, 1, 6, 6).repeat(32, 1, 1, 1)
    for f in (rand_flip, rand_crop):  # flips and crops: new tensors
        x0 = x.clone()
        assert f(x).shape == x.shape and torch.equal(x, x0)
    for f in (rand_erase, rand_copy):  # erasing and copying: in place, as the course's (its notebooks show the batch they passed in)
        y = x.clone()
        assert f(y, max_num=4) is y
    assert torch.equal(rand_flip(x, p=1.), x.flip(-1)) and torch.equal(rand_flip(x, p=0.), x)
    c = rand_crop(x, pad=1)
    shifts = {tuple((c[i, 0, 1:-1, 1:-1] == x[i, 0, 1+dy:5+dy, 1+dx:5+dx]).all().item() for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for i in range(len(x))}
    assert all(sum(s) >= 1 for s in shifts) and len(shifts) > 1  # every crop is a shift of at most 1 pixel, and they differ
    e = rand_erase(x.clone(), max_num=4)
    assert e.min() >= x.min() and e.max() <= x.max()

def test_summary_peek_and_capture_leave_the_model_alone(capsys):
    import matplotlib; matplotlib.use('Agg')
    from test_learner import toy_dls
    dls = toy_dls(n=12, bs=4)
    learn = TrainLearner(nn.Linear(3, 2), dls, F.cross_entropy, lr=1.)
    w = learn.model.weight.detach().clone()
    learn.summary()
    assert '|Linear|(4, 3)|(4, 2)|8|0.0|' in capsys.readouterr().out
    preds, targs, inps = learn.capture_preds(inps=True)
    assert preds.shape == (12, 2) and torch.equal(targs, dls.valid.tensors[1]) and torch.equal(inps, dls.valid.tensors[0])
    assert preds.device.type == 'cpu'
    assert torch.equal(learn.model.weight, w)

from mtlearn.accel import MixedPrecision
from mtlearn.learner import CancelBatchException

def test_mixed_precision_bf16_on_cpu():
    from test_learner import toy_dls
    seen = []
    class S(Callback):
        def after_predict(self, learn): seen.append((learn.preds.dtype, torch.is_autocast_enabled('cpu')))
        def after_batch(self, learn): seen.append(torch.is_autocast_enabled('cpu'))
    learn = TrainLearner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=[MixedPrecision(), S()])
    w = learn.model.weight.detach().clone()
    learn.fit(1, valid=False)
    assert seen[0] == (torch.bfloat16, True) and seen[1] is False  # autocast on for the forward, off afterwards
    assert learn.model.weight.dtype == torch.float32 and not torch.equal(w, learn.model.weight)
    with pytest.raises(ValueError, match='float16 needs CUDA'): TrainLearner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=[MixedPrecision(torch.float16)]).fit(1)

def test_mixed_precision_leaves_autocast_on_cancel():
    from test_learner import toy_dls
    class Cancel(Callback):
        def after_predict(self, learn): raise CancelBatchException()
    TrainLearner(nn.Linear(3, 2), toy_dls(), F.cross_entropy, cbs=[MixedPrecision(), Cancel()]).fit(1)
    assert not torch.is_autocast_enabled('cpu')

def test_one_iterable_callback_is_one_callback():
    "A HooksCallback iterates over its hooks; passed alone as `cbs` it is still one callback."
    from fastcore.test import test_eq
    from mtlearn.learner import cb_list
    astats = ActivationStats(fc.risinstance(nn.ReLU))
    test_eq(len(cb_list(astats)), 1)
    learn = TrainLearner(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), toy_dls(), F.cross_entropy, cbs=astats)
    learn.fit(1, cbs=ActivationStats(fc.risinstance(nn.Linear)))
    test_eq(len(astats), 1)
    test_eq(len(astats.hooks[0].stats[0]), len(learn.dls.train))  # every training batch recorded

def test_append_stats_uses_the_first_stat_items():
    from types import SimpleNamespace
    x = torch.rand(8, 5)  # all values inside the histogram's range [0, 10]
    h = SimpleNamespace()
    append_stats(h, None, None, x, stat_items=3)
    assert h.stats[2][0].sum() == 15  # 3 items × 5 activations
    torch.testing.assert_close(h.stats[0][0], x[:3].mean())
    torch.testing.assert_close(h.stats[1][0], x[:3].std())
    h = SimpleNamespace()
    append_stats(h, None, None, x, stat_items=None)
    assert h.stats[2][0].sum() == 40
    far = 1e3 + 1e-2*torch.randn(64, 50)  # a large mean and a small spread: E[x²] - E[x]² would lose every digit in float32
    h = SimpleNamespace()
    append_stats(h, None, None, far, stat_items=None)
    torch.testing.assert_close(h.stats[1][0].double(), far.double().std(), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match='`stat_items`'): ActivationStats(stat_items=0)
