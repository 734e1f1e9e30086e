"""The generation layer: what a trained model gives back.

``checkpoint`` loads a run's checkpoint or an exported folder as plain data (it can never run
code) and exports one; ``sampling`` steps a model one character at a time with its state carried
(temperature, top-k, top-p, greedy, one seeded generator per sample); ``metrics`` and
``evaluation`` score a split in one full pass. Imports the model and data layers; no Lightning,
no click.
"""
