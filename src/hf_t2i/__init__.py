"""hf_t2i: DALL-E, Parti, Fluid and Transfusion as first-class Hugging Face citizens."""

__version__ = "0.1.0.dev0"

from .models.dalle import DalleConfig, DalleForConditionalGeneration, DalleModel, DallePreTrainedModel
from .models.dalle_dvae import DalleDVAE, DalleDVAEConfig
