"""Worker setup hooks (`runtime_env["worker_process_setup_hook"]`).

Every Ray worker process imports this module when it starts, so it imports nothing beyond the standard
library: a hook in a module that pulled in the config (and with it torch and transformers) cost each
worker ~6 s on 2 cores, paid by every task and actor process a job starts.
"""

import logging


def quiet_train_cleaner() -> None:
    """For local clusters started without the dashboard.

    Ray Train's placement-group cleaner asks the state API, which the dashboard serves, whether the
    trainer is alive; without it the cleaner warns once a second for as long as a trainer runs.
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
