"""What the product promises on a GPU, checked on one: no host synchronisation in the per-batch path (metrics, progress,
activation statistics, the schedule's recorder, the multi-task engine with MGDA, SDMGrad and UPGrad in both modes),
HostScalar's pinned-memory path, float16 mixed precision (MixedPrecision, AccelerateCB), the aggregators' sync-free
paths against their CPU results, and a CUDA graph of one aggregation. Marked `cuda`: skipped where CUDA is missing
(`bash bench/gpu_suite.sh` runs them on the GPU machine)."""
import pytest, torch
import fastcore.all as fc
import torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy
from mtlearn.learner import *
from mtlearn.datasets import DataLoaders, TensorDataLoader
from mtlearn.activations import ActivationStats
import mtlearn.sgd  # noqa: F401
from mtlearn.accel import MixedPrecision, AccelerateCB
from mtlearn.multitask import MultiTaskGradCB, MultiTaskLoss, MultiTaskModel, TaskMetric
import mtlearn.aggregators as A

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]

class NoSync(Callback):
    "Every batch, from its first event to its last, under `torch.cuda.set_sync_debug_mode('error')`: a synchronising call raises."
    order = -1000
    def before_batch(self, learn): torch.cuda.set_sync_debug_mode('error')
    def cleanup_batch(self, learn): torch.cuda.set_sync_debug_mode('default')

def cuda_dls(n=2048, bs=256, tasks=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    ys = [torch.randint(0, 10, (n,), generator=g) for _ in range(max(tasks, 1))]
    mk = lambda sl, shuffle: TensorDataLoader(x[sl], *[y[sl] for y in ys], batch_size=bs, shuffle=shuffle, device='cuda')
    return DataLoaders(mk(slice(0, n - 512), True), mk(slice(n - 512, n), False))

def cnn(): return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 49, 10))

def test_single_task_fit_makes_no_host_sync_per_batch():
    learn = TrainLearner(cnn(), cuda_dls(), F.cross_entropy, opt_func=optim.AdamW,
                         cbs=[NoSync(), DeviceCB('cuda'), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(plot=True),
                              ActivationStats(fc.risinstance(nn.ReLU))])
    learn.fit_one_cycle(2, 1e-2)  # (with RecorderCB: lr and momentum recorded on the device, read once per epoch)
    assert learn.history[-1]['valid_accuracy'] >= 0 and len(learn.recorder.recs['lr']) == 2 * len(learn.dls.train)

def mt_model():
    enc = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 196, 50), nn.ReLU())
    return MultiTaskModel(enc, [nn.Linear(50, 10), nn.Linear(50, 10)])

@pytest.mark.parametrize('agg,mode', [(A.MGDA, 'params'), (A.MGDA, 'features'), (A.SDMGrad, 'params'), (A.UPGrad, 'params'), (A.UPGrad, 'features')])
def test_multi_task_fit_makes_no_host_sync_per_batch(agg, mode):
    metrics = MetricsCB(acc_left=TaskMetric(MulticlassAccuracy(), 0), acc_right=TaskMetric(MulticlassAccuracy(), 1))
    learn = TrainLearner(mt_model(), cuda_dls(tasks=2), MultiTaskLoss(F.cross_entropy, F.cross_entropy), lr=1e-3, opt_func=optim.Adam,
                         cbs=[NoSync(), DeviceCB('cuda'), metrics, ProgressCB(), MultiTaskGradCB(agg(), mode=mode)])
    learn.fit(1)
    assert learn.history[-1]['valid_acc_left'] >= 0

def test_hostscalar_reads_through_pinned_memory_without_waiting():
    h = HostScalar()
    t = torch.ones((), device='cuda') * 3
    torch.cuda.set_sync_debug_mode('error')
    try: h.put(t); h.get()
    finally: torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    assert h._buf.is_pinned() and h.get() == 3.

def test_float16_mixed_precision_trains():
    for cb in (MixedPrecision(), AccelerateCB(mixed_precision='fp16')):
        torch.manual_seed(0)
        m = MetricsCB(accuracy=MulticlassAccuracy())
        learn = TrainLearner(cnn(), cuda_dls(), F.cross_entropy, lr=1e-2, opt_func=optim.AdamW, cbs=[DeviceCB('cuda'), m, cb])
        learn.fit(2)
        assert all(torch.isfinite(p).all() for p in learn.model.parameters()), type(cb).__name__

SYNC_FREE = {'MGDA': lambda: A.MGDAWeighting(), 'SDMGrad': lambda: A.SDMGradWeighting(), 'UPGrad': lambda: A.UPGradWeighting(),
             'DualProj': lambda: A.DualProjWeighting(), 'PCGrad': lambda: A.PCGradWeighting(), 'CAGrad': lambda: A.CAGradWeighting(0.4),
             'NashMTL': lambda: A.NashMTLWeighting(), 'FairGrad': lambda: A.FairGradWeighting(1.), 'Krum': lambda: A.KrumWeighting(1),
             'MoDo': lambda: A.MoDoWeighting(), 'GradVac': lambda: A.GradVacWeighting()}

@pytest.mark.parametrize('name', list(SYNC_FREE))
def test_sync_free_paths_match_the_cpu(name):
    "On CUDA the default is the sync-free path: it makes no synchronising call and gives the CPU's weights."
    J = torch.randn(6, 500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G = J @ J.T
    torch.manual_seed(0); cpu = SYNC_FREE[name]()(G)
    w = SYNC_FREE[name]().cuda()
    torch.manual_seed(0)
    torch.cuda.set_sync_debug_mode('error')
    try: gpu = w(G.cuda())
    finally: torch.cuda.set_sync_debug_mode('default')
    torch.testing.assert_close(gpu.cpu(), cpu, atol={'CAGrad': 1e-6, 'NashMTL': 1e-8, 'FairGrad': 1e-8}.get(name, 1e-10), rtol=0)

def test_one_aggregation_step_in_a_cuda_graph():
    "The sync-free MGDA weighting and the combination Jᵀw captured once, replayed on new Jacobians copied into the static input."
    J_static = torch.randn(10, 100_000, device='cuda')
    w = A.MGDAWeighting(sync_free=True)
    def step(J): return w.weights(J @ J.T, True) @ J
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): step(J_static)  # warm-up on a side stream, as CUDA graphs need
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): out = step(J_static)
    for seed in range(3):
        J = torch.randn(10, 100_000, device='cuda', generator=torch.Generator('cuda').manual_seed(seed))
        J_static.copy_(J)
        g.replay()
        torch.testing.assert_close(out, step(J), rtol=1e-4, atol=1e-5)
