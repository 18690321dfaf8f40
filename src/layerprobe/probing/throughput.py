"""How fast a probe consumes features: the measured figures the plan and the CPU probe's threads use.

One place for them, so the plan (`layerprobe.plan.estimates`), the thread default
(`layerprobe.devices`) and the memory a CPU probe asks for (`layerprobe.resources`) never
disagree. Each says where its value comes from; a measured value names its table in
docs/BENCHMARKS.md, an assumed one says it is assumed. Torch-free: the DAG uses it.
"""

from __future__ import annotations

# ASSUMED: the cluster file system's read speed for one probe job (whole-chunk reads). Not
# measured: replace it with your file system's (a first run's <results>/benchmarks/ show it).
ASSUMED_READ_GB_PER_S = 1.0

# MEASURED (docs/BENCHMARKS.md, "IO loader", the sweep): the loader's time over the floor's
# (every chunk file read once, in order, by one thread) for the same bytes, page cache cold; the
# worst cold cell of the sweep at 039545d (CLIP-B/16, chunks of 32, store 3.9x the budget,
# batch 64). LLaVA-sized cells read faster than the floor (0.38-0.80).
LOADER_FLOOR_RATIO = 1.12

# MEASURED (docs/BENCHMARKS.md, "Loader + probe step (CPU)"): loader feeding the step over
# max(step alone, loader alone): the loader's threads cost the step ~1% on a CPU.
LOADER_STEP_OVERLAP = 1.01

# CPU cores one probe needs per GB/s of fp16 features consumed, at the slowest of the real widths
# (196x768 @224, 256x1024 @224, 576x1024 @336, 576x4096 @336): the probe step (BatchNorm, linear
# head, logits upsampled to the label size, cross-entropy ignoring 255, backward, AdamW) measured
# per core by benchmarks/probe_step.py. FILLED FROM docs/BENCHMARKS.md's "Probe step per CPU core"
# table, column "cores for 1 GB/s" (its largest value): replace this number when the table is
# measured again. The value here is PROVISIONAL and NOT backed by that table yet (not measured):
# quick runs on a loaded 2-vCPU VM gave ~100 (LLaVA-7B) to ~550 (ViT-B/16) cores per GB/s.
PROBE_CPU_CORES_PER_GB_S = 16.0

# CPU probe step memory, beyond the loader's budget: the upsampled logits dominate. Per batch the
# step holds about this many float32 tensors of batch x classes x label size^2 (the upsampled
# logits until the prediction is taken, log-softmax's output kept for the backward, the loss
# gradient and the logits' gradient). FILLED FROM docs/BENCHMARKS.md's probe-step table, column
# "step peak / logits tensor" (its largest value, rounded up).
STEP_LOGIT_TENSORS = 4.0
