"""Conversion between FunASR's original layout and ours (load, save, export)."""

from .loading import detect_layout, load_pretrained, save_pretrained

__all__ = ["detect_layout", "load_pretrained", "save_pretrained"]
