"""accessory: finetuning LLaMA-family models, LLaMA2-Accessory's workflow done properly."""
from accessory.api import load
from accessory.errors import AccessoryError

__all__ = ["load", "AccessoryError"]
