"""Conversion between FunASR's ORIGINAL layout and ours.

`load_pretrained` reads either layout (original -> HF when it is FunASR's), `save_hf_folder` writes an HF folder,
and `export.export_funasr` writes the original layout back (HF -> original); `original_layout` holds the one
rule table of tensor names both directions use.
"""

from .loading import detect_layout, load_pretrained, save_hf_folder

__all__ = ["detect_layout", "load_pretrained", "save_hf_folder"]
