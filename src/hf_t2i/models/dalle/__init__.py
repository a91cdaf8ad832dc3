from .configuration_dalle import DalleConfig, paper_attention_types
from .modeling_dalle import DalleCausalLMOutput, DalleForConditionalGeneration, DalleModel, DallePreTrainedModel


__all__ = [
    "DalleCausalLMOutput",
    "DalleConfig",
    "DalleForConditionalGeneration",
    "DalleModel",
    "DallePreTrainedModel",
    "paper_attention_types",
]
