"""The public API is typed, so that editors and type checkers can help: every exported function, and every public method
of an exported class (`@patch`ed ones included), annotates its parameters and its return; the package ships `py.typed`.
(`python -m mypy`, run by .ci/test, checks that the hints hold.)"""
import importlib, importlib.resources, inspect, pkgutil
from configparser import ConfigParser
from pathlib import Path

import pytest
import mtlearn

# Modules whose hints are still being written (by the engineer who owns them): left out of the completeness check
# below until they are typed. Remove a module from this set once it is.
NOT_YET_TYPED: set[str] = set()

MODULES = sorted(f'mtlearn.{m.name}' for m in pkgutil.iter_modules(mtlearn.__path__)
                 if m.name not in ('_modidx', 'all') and f'mtlearn.{m.name}' not in NOT_YET_TYPED)
CALLED = ('__init__', '__call__')  # the dunder methods that are API: how the class is built and called

def missing_hints(f, method=False):
    "The parameters of function `f` (not *args, **kwargs, nor a method's self or cls) and its return, unannotated."
    f = inspect.unwrap(f)  # (a context manager's or `torch.no_grad`'s wrapper: the function written)
    code, ann = f.__code__, inspect.get_annotations(f)
    names = list(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])
    if method and names and names[0] in ('self', 'cls'): names = names[1:]
    return [n for n in names if n not in ann] + ([] if 'return' in ann else ['return'])

def public_functions(modname):
    "(qualified name, function, is a method) for the module's exported functions and its exported classes' methods."
    mod = importlib.import_module(modname)
    for name in mod.__all__:
        o = getattr(mod, name)
        if inspect.isfunction(o) and o.__module__ == modname: yield name, o, False
        if not (inspect.isclass(o) and o.__module__ == modname): continue
        for an, a in vars(o).items():
            if an.startswith('_') and an not in CALLED: continue
            # (a class method, fastcore's `patch(cls_method=True)` ones too: the function, as the class gives it)
            f = a.fget if isinstance(a, property) else getattr(getattr(o, an), '__func__', a)
            # (what this package defines: not a method another package's class lends, nor one of a module not yet typed)
            if not inspect.isfunction(f) or not f.__module__.startswith('mtlearn.') or f.__module__ in NOT_YET_TYPED:
                continue
            yield f'{name}.{an}', f, True

def test_the_check_finds_what_is_not_annotated():
    def f(a, b: int, *args, c=1, **kwargs) -> int: return b
    def g(self, x: int): pass
    assert missing_hints(f) == ['a', 'c'] and missing_hints(g, method=True) == ['return']
    assert missing_hints(lambda x: x) == ['x', 'return']

def test_the_modules_are_found():
    assert {'mtlearn.learner', 'mtlearn.aggregators', 'mtlearn.merge', 'mtlearn.cli'} <= set(MODULES)
    names = {n for m in MODULES for n, _, _ in public_functions(m)}
    assert {'Learner.fit', 'Learner.save', 'Learner.aside', 'DataLoaders.from_dd_tensors', 'get_device',
            'TensorDataLoader.__init__', 'LRFinderCB.lrs', 'Aggregator.forward'} <= names

@pytest.mark.parametrize('modname', MODULES)
def test_every_public_function_and_method_is_annotated(modname):
    bad = {nm: miss for nm, f, method in public_functions(modname) if (miss := missing_hints(f, method))}
    assert not bad, f'{modname}: parameters and returns without a type hint (add them in the notebook): {bad}'

def test_the_package_ships_its_py_typed_marker():
    assert importlib.resources.files('mtlearn').joinpath('py.typed').is_file()
    cfg = ConfigParser(delimiters=['='])
    cfg.read(Path(__file__).resolve().parents[1]/'settings.ini', encoding='utf-8')
    assert 'py.typed' in cfg['DEFAULT']['package_data'].split(), "settings.ini's package_data should list py.typed"
