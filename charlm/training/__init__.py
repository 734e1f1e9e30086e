"""The training layer: a run folder from a corpus and a ``TrainConfig``.

``config`` and ``presets`` hold the settings; ``precision`` decides ``auto`` precision and the
default batch from what the machine does; ``lightning_module`` is the LightningModule and
DataModule; ``fit`` runs the Trainer with the callbacks of ``run_folder`` (validation,
checkpoints, samples, logs) and ``interrupt`` (Ctrl-C and SIGTERM save and stop); ``runlock``
keeps one run per folder; ``environment`` and ``allocator`` are the process-wide settings an
entry point applies. Imports the model, data and generation layers; no click.
"""
