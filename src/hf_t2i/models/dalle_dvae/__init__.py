from .configuration_dalle_dvae import DalleDVAEConfig
from .modeling_dalle_dvae import DalleDVAE, DalleDVAEOutput, DalleDVAEPreTrainedModel


__all__ = ["DalleDVAE", "DalleDVAEConfig", "DalleDVAEOutput", "DalleDVAEPreTrainedModel"]
