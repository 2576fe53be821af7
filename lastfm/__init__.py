"""Library code of the pipeline; the stage scripts at the top level use it.

Dependencies point one way (``tests/test_contracts.py`` checks it):

    stage scripts   preprocess.py  sessionize.py  fetch_tags.py  train.py  test_model.py
         |          (no stage script imports another)
    model modules   model.py (the study's network), synth.py (the generator)
         |
    this package    evaluate, report, recommend -> ensemble, hybrid, baselines, metrics,
                    ranks, data, nn and the networks  ->  common, config, paths, parse

- ``common``: errors, logging, JSON and table helpers, the one error path.
- ``config``: dataclass configurations -> command-line flags and ``config.json``.
- ``paths``: every stage's folders under one data root.
- ``parse``: the exact parser of the plays TSV.
- ``data``: the columns handed between stages, their readers, next-item events.
- ``metrics``: the ranking kernel and top-k (one tie policy), metrics, the listener
  bootstrap.
- ``baselines``: the count-based baselines.
- ``hybrid``: a network + transition counts hybrid chosen on validation.
- ``ensemble``: the baseline-only comparators (ensemble of the hybrid's form, LambdaMART
  blend).
- ``evaluate``, ``report``, ``ranks``, ``recommend``: the evaluation stage's parts (running
  methods, tables and figures, the ``--save-ranks`` file, ``--recommend``).
- ``nn`` and ``narm``, ``gru4rec``, ``sasrec``, ``stamp``: what every network shares, the
  peer networks.
"""
