import os, pytest
import matplotlib
matplotlib.use('Agg')

def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', help='also run tests marked slow (the test command does)')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: slow test (a site build, a browser, a benchmark in a subprocess, a large case), skipped unless --runslow')
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU, skipped without one (bench/gpu_suite.sh runs them)')
    # torcheval still calls torch.jit.script at import; the warning is about torch, not about mtlearn
    config.addinivalue_line('filterwarnings', 'ignore:`torch.jit.script` is deprecated:DeprecationWarning')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
