"""Learning from use: the event store, evaluation, learning proper and releases, one subpackage per concern.

``events`` (what every search and feedback writes), ``evaluation`` (datasets, metrics, reports), ``learning``
(miners, trainers, calibration, pretraining), ``releases`` (gate, promote, rollback, registry, jobs, admin actions).
:mod:`training.loop` composes them into mine -> train -> evaluate -> promote.
"""
