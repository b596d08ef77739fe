"""Training and evaluation of HeLo: the application above the op library.

``run_experiment(dataset, model_config, train_config)`` runs a protocol (see ``experiment``); the other modules
are its parts: the run's options (``config``, ``precision``), one optimisation step (``step``), the baselines, the
summary (``report``), checkpoints (``checkpoint``, ``plain_state``, ``atomic_files``, ``resume_state``,
``rng_state``, ``fingerprint``), the run directory's lock (``run_dir``), saved models (``saved_model``) and
data-parallel training (``distributed``). Nothing in the op library imports this package.
"""
