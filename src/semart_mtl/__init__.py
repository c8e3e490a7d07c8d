"""Multi-task, multi-modal benchmark on SemArt: type, school, timeframe and medium of paintings."""

from .config import BACKBONES, TASKS, DataConfig, ModelConfig, RunConfig, TrainConfig

__all__ = ["BACKBONES", "TASKS", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig"]
