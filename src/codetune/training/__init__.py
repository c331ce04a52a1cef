"""Train stage (the folder is `training` so that `from codetune import train` is always the function)."""

from codetune.training.loop import train

__all__ = ["train"]
