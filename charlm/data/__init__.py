"""The data layer: text in, one stream of character ids out, split and cut into batches.

``sources`` reads what ``--data`` names (files, folders, globs, ``datasets`` folders, ``hf:``
datasets) through Hugging Face ``datasets``; ``vocab`` maps characters to ids; ``corpus`` keeps
the encoded ids in a memory-mapped cache, splits them and serves the batch streams training and
evaluation read; ``downloads`` fetches the classic corpora with their checksums. Imports the base
only: nothing of the model, no Lightning, no click.
"""
