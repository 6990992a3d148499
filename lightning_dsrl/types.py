"""The records that flow between the parts, each built by one stage and read by the next ones:

    PromptDataModule --PromptBatch--> Sampler --Rollout--> RLModule --TrainBatch--> Objective --> LossOutput

One typed record per hop, with tensor shapes written at each field (:mod:`lightning_dsrl.records`
for the small ones, :mod:`lightning_dsrl.batches` for the batches). ``RolloutBatch`` is the old name
of :class:`Rollout`.
"""

from lightning_dsrl.batches import PromptBatch, Rollout, TrainBatch
from lightning_dsrl.records import LossOutput, PromptRecord, RewardResult, SamplingParams

RolloutBatch = Rollout

__all__ = ["PromptRecord", "PromptBatch", "RewardResult", "Rollout", "RolloutBatch", "TrainBatch", "LossOutput",
           "SamplingParams"]
