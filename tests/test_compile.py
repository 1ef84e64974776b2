"""`CompileCB`: a compiled model trains as the eager one, keeps the plain model's keys, resumes, and composes with
DeviceCB, MixedPrecision and MultiTaskGradCB (features mode; params mode and a compiled whole model refused)."""
import pytest, torch
import torch.nn.functional as F
from torch import nn, optim

from mtlearn.learner import *
from mtlearn.accel import CompileCB, MixedPrecision
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.tracker import SaveModelCB

def data(n=256, bs=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    y = (x @ torch.randn(12, 4, generator=g)).argmax(1)
    return DataLoaders(TensorDataLoader(x, y, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(1)),
                       TensorDataLoader(x[:64], y[:64], batch_size=32))

def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))

def train(model, cbs=(), epochs=2, **kw):
    learn = TrainLearner(model, data(), F.cross_entropy, lr=1e-2, opt_func=optim.AdamW, cbs=[MetricsCB(), *cbs])
    learn.logging = False
    learn.fit(epochs, **kw)
    return learn

def flat(m): return torch.cat([p.detach().flatten() for p in m.parameters()])

def test_compiled_trains_as_eager_and_keeps_the_plain_keys(tmp_path):
    eager, comp = mlp(), mlp()
    train(eager, [DeviceCB()])
    learn = train(comp, [DeviceCB(), CompileCB(), SaveModelCB(tmp_path/'m.pt', every_batches=3)])
    torch.testing.assert_close(flat(comp), flat(eager), rtol=1e-5, atol=1e-6)
    assert not is_compiled(comp) and list(comp.state_dict()) == list(eager.state_dict())  # put back, plain keys
    sd = torch.load(tmp_path/'m_last.pt', weights_only=True)['model']
    assert list(sd) == ['0.weight', '0.bias', '2.weight', '2.bias']
    plain = mlp(5); plain.load_state_dict(sd)  # loads into the plain model
    # resumed mid-epoch (batch 3 of epoch 1, compiled again) against the run that did not stop
    again = mlp(7)
    train(again, [DeviceCB(), CompileCB(), SaveModelCB(tmp_path/'m.pt', every_batches=3)], resume=tmp_path/'m_last.pt')
    torch.testing.assert_close(flat(again), flat(comp), rtol=1e-5, atol=1e-6)
    assert learn.history[-1]['valid_loss'] < learn.history[0]['train_loss']

def test_mixed_precision_and_a_bad_module_name():
    losses = []
    for extra in ([], [CompileCB()]):  # the course's plain Learner, its steps from MixedPrecision (bfloat16 here)
        bf = Learner(mlp(), data(), F.cross_entropy, lr=1e-2, opt_func=optim.AdamW,
                     cbs=[DeviceCB(), MixedPrecision(), MetricsCB(), *extra])
        bf.logging = False
        bf.fit(1)
        losses.append(bf.history[-1]['valid_loss'])
    assert abs(losses[0] - losses[1]) < 0.02, losses  # (bfloat16 rounding: not the same operations in the same order)
    with pytest.raises(ValueError, match=r"`module`: the model \(Sequential\) has no submodule 'encoder'; its children "
                                         r"are \['0', '1', '2'\]"):
        train(mlp(), [CompileCB('encoder')], epochs=1)
    with pytest.raises(ValueError, match="`module` should be None"): CompileCB(3)

def test_multitask_features_mode_with_a_compiled_encoder():
    from mtlearn.aggregators import UPGrad
    from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, synthetic_tasks, tiny_mtl_model
    def run(cbs, mode='features', whole=False):
        torch.manual_seed(0)
        model = tiny_mtl_model(2)
        if whole: model = torch.compile(model)
        learn = TrainLearner(model, synthetic_tasks(2, n=256), MultiTaskLoss(F.mse_loss, F.mse_loss), lr=0.05,
                             cbs=[MultiTaskGradCB(UPGrad(), mode=mode), *cbs])
        learn.logging = False
        learn.fit(1)
        return flat(model)
    torch.testing.assert_close(run([CompileCB('encoder')]), run([]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"mode='params' differentiates each task's loss through the shared module in one "
                                         r"batched backward pass \(vmap\)"):
        run([CompileCB('encoder')], mode='params')
    with pytest.raises(ValueError, match="which a compiled whole model does not expose"): run([CompileCB()])
    with pytest.raises(ValueError, match="which a compiled whole model does not expose"): run([], whole=True)
