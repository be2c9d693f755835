"""`tandem bench`: the one harness every tandem performance claim comes from.

It runs Spec-Bench prompts through several systems in the same process and the same run,
alternating prompt by prompt, so that ratios between systems survive a noisy machine. The
arithmetic lives in `metrics` and `summary` (pure Python, tested on fixed inputs); the systems in
`vllm_system` and `tandem_system`; the order of work in `runner`; the files in `report`.
"""
