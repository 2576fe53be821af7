"""Library code of the pipeline; the stage scripts at the top level use it.

Dependencies point one way (``tests/test_layout.py`` checks it):

    stage scripts   preprocess.py  sessionize.py  fetch_tags.py  train.py  test_model.py
         |          (no stage script imports another)
    model modules   model.py (the study's network), synth.py (the generator)
         |
    this package    data, metrics, baselines, hybrid  ->  common, config, paths, parse

- ``common``: errors, logging, JSON and table helpers, the one error path.
- ``config``: dataclass configurations -> command-line flags and ``config.json``.
- ``paths``: every stage's folders under one data root.
- ``parse``: the exact parser of the plays TSV.
- ``data``: the columns handed between stages, their readers, next-item events.
- ``metrics``: the ranking contract (one tie policy), metrics, intervals.
- ``baselines``: the count-based baselines.
- ``hybrid``: a network + transition counts hybrid chosen on validation.
"""
