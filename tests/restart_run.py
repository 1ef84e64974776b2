"""A job that dies in its first attempt, for `torchrun --max-restarts 1 restart_run.py OUT`: process 1 exits after the
first collective; the restarted attempt joins a fresh process group and writes OUT/ok_r{rank}."""
import os, sys, torch
from pathlib import Path
from mtlearn.procs import init_distributed, all_mean

out = Path(sys.argv[1])
r, w = init_distributed()
all_mean(torch.ones(1))
if os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0' and r == 1: os._exit(3)
(out / f'ok_r{r}').write_text(str(float(all_mean(torch.tensor(float(r))))))
torch.distributed.barrier(); torch.distributed.destroy_process_group()
