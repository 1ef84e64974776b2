import gzip, warnings
import numpy as np, pytest, torch
import datasets
import mtlearn.datasets as mds
from mtlearn.datasets import *

def idx_folder(tmp_path, n_train=6, n_test=4, seed=0):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('test', n_test)):
        ims_f, lbl_f = IDX_FILES[split]
        write_idx(tmp_path/ims_f, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path/lbl_f, rng.integers(0, 10, n, dtype=np.uint8))
    return tmp_path

@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch): monkeypatch.setenv('MTLEARN_CACHE', str(tmp_path/'cache'))

def test_read_idx_errors(tmp_path):
    f = tmp_path/'x.gz'
    write_idx(f, np.zeros((3, 2), np.uint8))
    raw = gzip.decompress(f.read_bytes())
    (tmp_path/'magic').write_bytes(b'\1\0' + raw[2:])
    with pytest.raises(ValueError, match='bad magic number'): read_idx(tmp_path/'magic')
    (tmp_path/'type').write_bytes(raw[:2] + b'\x0d' + raw[3:])
    with pytest.raises(ValueError, match='element type'): read_idx(tmp_path/'type')
    (tmp_path/'long').write_bytes(raw + b'\0')
    with pytest.raises(ValueError, match=r'promises shape \(3, 2\).*holds 7'): read_idx(tmp_path/'long')
    (tmp_path/'hdr').write_bytes(raw[:6])
    with pytest.raises(ValueError, match='inside its header'): read_idx(tmp_path/'hdr')
    (tmp_path/'cut.gz').write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match='cut.gz` is a corrupt or truncated gzip'): read_idx(tmp_path/'cut.gz')
    with pytest.raises(FileNotFoundError, match='nope'): read_idx(tmp_path/'nope')

def test_load_from_folder_schema_and_cache(tmp_path):
    folder = idx_folder(tmp_path/'d')
    for _ in range(2):  # built, then read back from the cache
        dd = load_fashion_mnist(folder)
        assert list(dd) == ['train', 'test'] and dd['train'].num_rows == 6 and dd['test'].num_rows == 4
        assert dd['train'].features == FASHION_FEATURES
        im = dd['train'][0]['image']
        assert im.mode == 'L' and im.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(im), read_idx(folder/IDX_FILES['train'][0])[0])
    assert len(list((tmp_path/'cache').iterdir())) == 1

def test_load_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='`path` should be a folder'): load_fashion_mnist(tmp_path/'missing')
    monkeypatch.setenv('MTLEARN_DATA', str(tmp_path/'missing'))
    with pytest.raises(FileNotFoundError, match='MTLEARN_DATA'): load_fashion_mnist()
    folder = idx_folder(tmp_path/'d')
    f = folder/IDX_FILES['test'][1]
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(ValueError, match='t10k-labels-idx1-ubyte.gz'): load_fashion_mnist(folder)
    folder = idx_folder(tmp_path/'e')
    write_idx(folder/IDX_FILES['test'][1], np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match='holds 4 images but .* holds 3 labels'): load_fashion_mnist(folder)

def test_sample_fallback_warns(tmp_path, monkeypatch):
    monkeypatch.delenv('MTLEARN_DATA', raising=False)
    monkeypatch.setattr(mds, 'DEBIAN_FMNIST', tmp_path/'none')
    monkeypatch.setattr(mds, '_from_hub', lambda: None)
    with pytest.warns(UserWarning, match='SAMPLE'): dd = load_fashion_mnist()
    assert (dd['train'].num_rows, dd['test'].num_rows) == (3000, 1000)

@pytest.mark.skipif(not DEBIAN_FMNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_full_dataset_schema(monkeypatch):
    monkeypatch.delenv('MTLEARN_CACHE')  # the user's cache: building the full set anew takes seconds
    dd = load_fashion_mnist()
    assert (dd['train'].num_rows, dd['test'].num_rows) == (60000, 10000)
    assert dd['train'].features['label'].names == FASHION_CLASSES
    x, y = ds_tensors(dd['test'])
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8 and y.bincount().tolist() == [1000]*10

def test_ds_tensors_decodes_any_image_dataset(tmp_path):
    dd = load_fashion_mnist(idx_folder(tmp_path/'d'))
    sub = dd['train'].select([4, 1, 2])  # a new fingerprint: decoded, not looked up
    x, y = ds_tensors(sub)
    ref = read_idx(tmp_path/'d'/IDX_FILES['train'][0])[[4, 1, 2]]
    np.testing.assert_array_equal(x[:, 0].numpy(), ref)
    assert y.tolist() == sub['label']
    with pytest.raises(KeyError, match='Column `img`'): ds_tensors(sub, x='img')

def test_tensor_loader_covers_each_item_once():
    x, y = torch.arange(103), torch.arange(103)*2
    dl = TensorDataLoader(x, y, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        xs, ys = map(torch.cat, zip(*dl))
        assert sorted(xs.tolist()) == list(range(103)) and torch.equal(ys, xs*2)
    assert not torch.equal(xs, x)  # shuffled
    assert len(dl) == 11 and [len(b[0]) for b in TensorDataLoader(x, batch_size=10, drop_last=True)] == [10]*10

def test_tensor_loader_errors():
    with pytest.raises(ValueError, match='same length'): TensorDataLoader(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match='batch_size'): TensorDataLoader(torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match='`tfms`'): TensorDataLoader(torch.zeros(3), tfms=[None, None])
    with pytest.raises(ValueError, match='std'): ByteNorm(std=0)
    with pytest.raises(ValueError, match='training and a validation'): DataLoaders([1])

def test_bytenorm_matches_course_transform():
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    ref = torch.stack([(to_tensor(o[0].numpy()) - 0.28)/0.35 for o in x])
    torch.testing.assert_close(ByteNorm(0.28, 0.35)(x), ref)
    assert ByteNorm(flat=True)(x).shape == (5, 784)
    assert ByteNorm(dtype=torch.float64)(x).dtype == torch.float64

def test_from_dd_course_path(tmp_path):
    dd = load_fashion_mnist(idx_folder(tmp_path/'d'))
    @inplace
    def tfm(b): b['image'] = [to_tensor(o) for o in b['image']]
    xb, yb = next(iter(DataLoaders.from_dd(dd.with_transform(tfm), 4).valid))
    assert xb.shape == (4, 1, 28, 28) and yb.shape == (4,)
    b = next(iter(DataLoaders.from_dd(dd.with_transform(tfm), 4, as_tuple=False).valid))
    assert set(b) == {'image', 'label'}

def test_hub_skipped_quickly_when_unreachable(monkeypatch):
    import socket, time
    def refuse(*a, **k): raise OSError('unreachable')
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('HF_DATASETS_OFFLINE', raising=False)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: pytest.fail('the hub should not be asked'))
    t = time.perf_counter()
    assert mds._from_hub() is None and time.perf_counter() - t < 1

def test_columns_are_read_in_one_slice():
    "Issue 27: `np.asarray(ds.with_format('numpy')[col])` reads row by row (about 30 times slower); the slice gives the same array."
    import numpy as np
    from datasets import Dataset
    from mtlearn.datasets import _column
    ds = Dataset.from_dict({'a': np.arange(50), 'b': np.random.rand(50, 2).tolist(), 'c': ['x'] * 50})
    for c in ('a', 'b'): np.testing.assert_array_equal(_column(ds, c), np.asarray(ds.with_format('numpy')[c]))
