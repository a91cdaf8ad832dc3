from .configuration_dalle_dvae import DalleDVAEConfig
from .configuration_dalle_pytorch_dvae import DallePytorchDVAEConfig
from .modeling_dalle_dvae import DalleDVAE, DalleDVAEOutput, DalleDVAEPreTrainedModel
from .modeling_dalle_pytorch_dvae import DallePytorchDVAE, DallePytorchDVAEOutput, DallePytorchDVAEPreTrainedModel


__all__ = [
    "DalleDVAE",
    "DalleDVAEConfig",
    "DalleDVAEOutput",
    "DalleDVAEPreTrainedModel",
    "DallePytorchDVAE",
    "DallePytorchDVAEConfig",
    "DallePytorchDVAEOutput",
    "DallePytorchDVAEPreTrainedModel",
]
