"""The input pipeline: TFDS sources, transforms, masking, replication, schedules, global batches.

Modules (import them directly; this package imports nothing so that light users, e.g. the PyAV
decode workers, do not pay for TensorFlow):
  config      per-source ConfigDict defaults and validation
  masking     random | tube | causal | frame masks with exact counts (SPEC §2)
  transforms  training crops/flips for images and video clips (SPEC §3.2, §3.3)
  eval_transforms  resize + centre crop; T temporal x S spatial video views (SPEC §4.2)
  eval_pipeline    ordered evaluation batches, padded so every example counts exactly once
  sources     TFDS builders by name, per-process splits, clear errors for unprepared data
  pipeline    one source -> one epoch of local batches, exactly resumable
  schedule    which source each step of an epoch reads (identical on every host)
  loader      global jax.Arrays from all sources, prefetched in a background thread
  builders    TFDS builders for SSv2, Kinetics, generic CSV video folders and the demo set
  prepare     command line to build a dataset from a manual dir
"""
