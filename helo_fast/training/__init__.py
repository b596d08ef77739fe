"""Training and evaluation of HeLo: the application above the op library (which imports nothing from here).

``run_experiment(dataset, model_config, train_config)`` runs a protocol (``experiment``). Its parts, one job per
module: the run's options (``config``, ``precision``) and what they resolve to here (``plan``), one optimisation
step and the metrics (``step``), the baselines (``baselines``), the summary (``report``), checkpoint files
(``checkpoint``, ``plain_state``, ``atomic_files``), what a resume must check and restore (``resume_state``,
``rng_state``, ``fingerprint``), the run directory's lock (``run_dir``), model files and their re-scoring
(``saved_model``), and data-parallel training (``distributed``).
"""

from .checkpoint import CheckpointError
from .config import TrainConfig
from .experiment import Experiment, TrainingDiverged, run_experiment, run_plan
from .plan import RunPlan, plan_run
from .report import format_table, summarize, write_json
from .saved_model import evaluate_saved_models
from .step import evaluate, make_optimizer, predict, train_step

__all__ = [
    "TrainConfig",
    "RunPlan",
    "plan_run",
    "Experiment",
    "run_experiment",
    "run_plan",
    "TrainingDiverged",
    "CheckpointError",
    "format_table",
    "summarize",
    "write_json",
    "evaluate_saved_models",
    "evaluate",
    "make_optimizer",
    "predict",
    "train_step",
]
