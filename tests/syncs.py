"A dispatch mode that counts device→host reads, for the tests that check a code path makes none."
import torch
from torch.utils._python_dispatch import TorchDispatchMode

class CountSyncs(TorchDispatchMode):
    "Count the ops that copy a value from a tensor to the host (`.item()`, `bool(t)`, `float(t)`...) while active."
    def __init__(self):
        super().__init__()
        self.n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default): self.n += 1
        return func(*args, **(kwargs or {}))
