"""A conversation on the patched llama.cpp: the model pair, the chat template, the context sized by what the
stage keeps, prefill through the stage, sampling (VisionChat ties them together)."""

from ..llama.stage import ImageReport
from .chat import VisionChat
from .reports import PictureReport, TurnReport, group_pictures

__all__ = ["ImageReport", "PictureReport", "TurnReport", "VisionChat", "group_pictures"]
