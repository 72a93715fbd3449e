"""Supervised training: masked sequences, bucketed batches, the SFT trainer and its checkpoints."""

from etagent.train.sequences import TrainSequence, end_token_id, from_text, from_trajectory, truncate
from etagent.train.optim import LoraSettings
from etagent.train.sft import SFTConfig, train_sft

__all__ = ["TrainSequence", "from_trajectory", "from_text", "truncate", "end_token_id",
           "SFTConfig", "LoraSettings", "train_sft"]
