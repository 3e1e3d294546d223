"""effnet's Optuna sweeper where Hydra looks for plugins: Hydra instantiates a sweeper only from a
class under `hydra_plugins` (src/effnet/conf/hydra/sweeper/optuna.yaml's `_target_`). The sweeper itself is
effnet.sweeper; this module stays as light to import as that one (Hydra imports every plugin at
start-up, also for --help)."""

from effnet import sweeper


class OptunaSweeper(sweeper.OptunaSweeper):
    """effnet.sweeper.OptunaSweeper: Optuna's ask/tell, trials launched in batches of n_jobs."""
