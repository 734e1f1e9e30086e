"""The training layer: a run folder from a corpus and a ``TrainConfig``.

``config`` and ``presets`` hold the settings; ``precision`` decides ``auto`` precision and the
default batch from what the machine does; ``optimizer`` builds the AdamW that both train and
time; ``lightning_module`` is the LightningModule and DataModule; ``fit`` runs the Trainer with
the callbacks of ``run_folder``, one per job (the end of the run, validation and checkpoints,
samples), and ``interrupt`` (Ctrl-C and SIGTERM save and stop), which work in any order;
``runlock`` keeps one run per folder; ``environment`` and ``allocator`` are the process-wide
settings an entry point applies. Imports the model, data and generation layers; no click.
"""
