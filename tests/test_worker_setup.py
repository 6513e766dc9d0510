"""The worker setup hook runs in every Ray worker process at start, so its module must stay light."""

import subprocess
import sys

from deepinterestgr.config import RayConfig
from ray_jobs.common import runtime_env


def test_the_hook_a_local_cluster_runs_in_every_worker_imports_neither_torch_nor_the_config():
    hook = runtime_env(RayConfig())["worker_process_setup_hook"]
    module, function = hook.rsplit(".", 1)
    heavy = ("torch", "transformers", "deepinterestgr.config", "ray.train")
    code = (f"import importlib, sys; getattr(importlib.import_module({module!r}), {function!r})(); "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "", f"{hook} pulls {loaded} into every worker"
