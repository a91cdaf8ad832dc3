"""hf_t2i: DALL-E, Parti, Fluid, Muse and Transfusion as first-class Hugging Face citizens.

Importing the package registers its models with the transformers Auto classes and the "text-to-image" pipeline task.
"""

__version__ = "0.1.0.dev0"

from .auto import AutoModelForTextToImage, register_all
from .image_processing import T2IImageProcessor
from .models.dalle import DalleConfig, DalleForConditionalGeneration, DalleModel, DallePreTrainedModel
from .models.dalle.processing_dalle import DalleProcessor
from .models.dalle_dvae import DalleDVAE, DalleDVAEConfig, DallePytorchDVAE, DallePytorchDVAEConfig
from .models.fluid import (
    FluidConfig,
    FluidForConditionalGeneration,
    FluidMAEModel,
    FluidModel,
    FluidProcessor,
    MarConfig,
    MarForConditionalGeneration,
)
from .models.muse import MuseConfig, MuseForConditionalGeneration, MuseModel, MusePreTrainedModel, MuseProcessor
from .models.parti import PartiConfig, PartiForConditionalGeneration, PartiModel, PartiProcessor
from .models.transfusion import (
    TransfusionConfig,
    TransfusionForConditionalGeneration,
    TransfusionModel,
    TransfusionProcessor,
)
from .models.vit_vqgan import ViTVQGAN, ViTVQGANConfig, ViTVQGANUpsampler, ViTVQGANUpsamplerConfig
from .pipelines import (
    DallePipeline,
    FluidPipeline,
    MusePipeline,
    PartiPipeline,
    T2IPipeline,
    T2IPipelineOutput,
    TextToImagePipeline,
)
from .pipelines.transfusion.pipeline_transfusion import TransfusionPipeline
from .processing_utils import T2IProcessor
from .tokenization import train_bpe_tokenizer


register_all()

__all__ = [
    "AutoModelForTextToImage",
    "DalleConfig",
    "DalleDVAE",
    "DalleDVAEConfig",
    "DalleForConditionalGeneration",
    "DalleModel",
    "DallePipeline",
    "DallePreTrainedModel",
    "DalleProcessor",
    "DallePytorchDVAE",
    "DallePytorchDVAEConfig",
    "FluidConfig",
    "FluidForConditionalGeneration",
    "FluidMAEModel",
    "FluidModel",
    "FluidPipeline",
    "FluidProcessor",
    "MarConfig",
    "MarForConditionalGeneration",
    "MuseConfig",
    "MuseForConditionalGeneration",
    "MuseModel",
    "MusePipeline",
    "MusePreTrainedModel",
    "MuseProcessor",
    "PartiConfig",
    "PartiForConditionalGeneration",
    "PartiModel",
    "PartiPipeline",
    "PartiProcessor",
    "T2IPipeline",
    "T2IImageProcessor",
    "T2IPipelineOutput",
    "T2IProcessor",
    "TextToImagePipeline",
    "TransfusionConfig",
    "TransfusionForConditionalGeneration",
    "TransfusionModel",
    "TransfusionPipeline",
    "TransfusionProcessor",
    "ViTVQGAN",
    "ViTVQGANConfig",
    "ViTVQGANUpsampler",
    "ViTVQGANUpsamplerConfig",
    "register_all",
    "train_bpe_tokenizer",
]
