"""Write README.md from index.ipynb (Quarto, which nbdev_readme needs, is not available here), or with --check
fail if README.md or its images differ from what index.ipynb gives.

    python .ci/readme.py [--check]
"""
import base64, json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
IMG_DIR = 'nbs/images'

def render(nb):
    "README text and {path: png bytes} for the notebook `nb`."
    out, imgs = [], {}
    for i, c in enumerate(nb['cells']):
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            out.append(src)
            continue
        if re.search(r'^#\|\s*hide', src, re.M): continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if code: out.append(f'```python\n{code}\n```')
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if 'image/png' in data:
                name = f'{IMG_DIR}/readme_{i}_{len(imgs)}.png'
                imgs[name] = base64.b64decode(''.join(data['image/png']))
                out.append(f'![]({name})')
            else:
                text = ''.join(o.get('text', '')) or ''.join(data.get('text/plain', ''))
                if text.strip(): out.append('```\n' + text.rstrip() + '\n```')
    return '\n\n'.join(out) + '\n', imgs

def main(check=False):
    text, imgs = render(json.loads((root/'index.ipynb').read_text()))
    text = '<!-- generated from index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n' + text
    old_imgs = {str(p.relative_to(root)) for p in (root/IMG_DIR).glob('readme_*.png')}
    if check:
        bad = [] if (root/'README.md').read_text() == text else ['README.md']
        bad += [n for n, b in imgs.items() if not (root/n).exists() or (root/n).read_bytes() != b]
        bad += sorted(old_imgs - set(imgs))
        if bad: sys.exit(f'README out of sync with index.ipynb ({", ".join(bad)}): run `python .ci/readme.py`')
        return
    (root/IMG_DIR).mkdir(parents=True, exist_ok=True)
    for n in old_imgs - set(imgs): (root/n).unlink()
    for n, b in imgs.items(): (root/n).write_bytes(b)
    (root/'README.md').write_text(text)

if __name__ == '__main__': main('--check' in sys.argv)
