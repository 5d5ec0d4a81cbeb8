"""Fine-tuning FFS detectors on labelled images (``fakesake finetune``).

Pure parts, importable without torch: :mod:`.config` (the recipe as data), :mod:`.split` (train/validation by
source group), :mod:`.stopping` (early stopping), :mod:`.history` (per-epoch records), :mod:`.gate` (the
promotion gate) and :mod:`.card` (``MODEL_CARD.md``). Torch parts: :mod:`.data` (decode, augment, squash
resize), :mod:`.corpus` (labelled images read once, keyed for the split), :mod:`.trainer` (the loop with timm's
Mixup/CutMix, cosine schedule and AMP), :mod:`.checkpoint` (resumable training state) and :mod:`.outputs` (the
before/after evaluation and ``calibration.json``).
"""
