"""The machinery the training-based methods share, one job per module.

`streams` (seeded per-step randomness), `subsets` (trainable parameters by name), `diffusion`
(conditioning batches, U-Net predictions, DDIM partial denoising), `losses`, `updates` (masked
Adam steps, exact deltas), `checkpoints` (save and exact resume), `loop` (the checkpointed
training loop), `prompts` (anchor prompt text) and `diagnostics`. The engines built on them are
`erasurelab.methods.finetune.FineTuner` (full weights) and `erasurelab.methods.lora_engine.LoraTuner`.
"""
