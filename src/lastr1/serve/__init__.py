"""``lastr1 serve``: a policy server that openpi's published websocket client talks to unchanged.

Why a package of small modules: each safety property is one module's job and is tested alone --
:mod:`.codec` (msgpack + openpi's numpy extension, never pickle, only plain numeric dtypes),
:mod:`.validate` (every observation field checked against what the checkpoint expects),
:mod:`.action_filter` (finite, clipped to the dataset's range, optional translation limit),
:mod:`.worker` (inference off the event loop, optional batching), :mod:`.server` (the websocket and
``GET /healthz`` front end) and :mod:`.remote` (the evaluator's policy adapter over openpi-client).
See ``docs/serving.md``.
"""
