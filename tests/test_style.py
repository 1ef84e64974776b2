"The package reads on a screen: no line of its code over 120 bytes (so over 120 characters by any count) (nbdev's generated `__all__` and index aside)."
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'mtlearn'

def test_no_line_of_the_package_is_over_120_characters():
    long = [f'{p.name}:{i}: {len(l.encode())} bytes' for p in sorted(PKG.glob('*.py')) if p.name != '_modidx.py'
            for i, l in enumerate(p.read_text().splitlines(), 1) if len(l.encode()) > 120 and not l.startswith('__all__ = ')]
    assert not long, f'lines over 120 characters (wrap them in the notebooks): {long}'
