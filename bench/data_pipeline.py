"""Images per second through three data pipelines over the Fashion-MNIST training set, side by side in one run:
the course's per-item path (`with_transform` + `DataLoaders.from_dd`), mtlearn's tensor fast path
(`DataLoaders.from_dd_tensors`: uint8 tensors, normalised per batch), and plain indexing of a pre-normalised float tensor
(`x[idx]`, the goal's baseline; `index_select` is shown too, as the fastest way to gather floats that need no normalising).

    python bench/data_pipeline.py [--quick]
"""
import argparse, statistics, time
import torch
from mtlearn.datasets import load_fashion_mnist, DataLoaders, inplace, to_tensor

def rate(make_iter, n_batches, bs):
    it = make_iter()
    next(it)  # start-up (worker-free here, but the first batch pays for the permutation)
    t = time.perf_counter()
    n = 0
    for _ in range(n_batches): n += len(next(it)[0])
    return n/(time.perf_counter()-t)

def main(quick=False):
    torch.set_num_threads(2)
    bs, reps = 1024, 3 if quick else 7
    dd = load_fashion_mnist()
    @inplace
    def tfm(b): b['image'] = [(to_tensor(o).flatten()-0.28)/0.35 for o in b['image']]
    course = DataLoaders.from_dd(dd.with_transform(tfm), bs)
    fast = DataLoaders.from_dd_tensors(dd, bs, mean=0.28, std=0.35, flat=True)
    x, y = fast.train.tensors
    xf = ((x.float()/255 - 0.28)/0.35).flatten(1)
    def plain():  # what one usually writes
        idx = torch.randperm(len(xf))
        for i in range(0, len(xf), bs):
            j = idx[i:i+bs]
            yield xf[j], y[j]
    def plain_select():  # the fastest gather of pre-normalised floats, for reference
        idx = torch.randperm(len(xf))
        for i in range(0, len(xf), bs):
            j = idx[i:i+bs]
            yield xf.index_select(0, j), y.index_select(0, j)
    nb_fast = len(fast.train) - 1
    res = {'course (per item)': [], 'fast path': [], 'plain indexing': [], 'plain index_select': []}
    for _ in range(reps):
        res['course (per item)'].append(rate(lambda: iter(course.train), 4 if quick else 12, bs))
        res['fast path'].append(rate(lambda: iter(fast.train), nb_fast, bs))
        res['plain indexing'].append(rate(plain, nb_fast, bs))
        res['plain index_select'].append(rate(plain_select, nb_fast, bs))
    med = {k: statistics.median(v) for k, v in res.items()}
    base = med['plain indexing']
    print(f"{'pipeline':<20}{'images/s (median of ' + str(reps) + ')':>28}{'vs plain':>10}")
    for k, v in med.items(): print(f'{k:<20}{v:>28,.0f}{v/base:>10.3f}')
    r = med['fast path']/base
    print(f"GOAL data_fast_vs_plain {r:.2f} >= 0.9 {'PASS' if r >= 0.9 else 'MISS'}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer repetitions and batches')
    main(p.parse_args().quick)
