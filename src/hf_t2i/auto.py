"""The one place that registers hf_t2i with the transformers Auto classes and pipeline registry.

Importing `hf_t2i` runs `register_all()` once, after which `AutoConfig`, `AutoModel`, `AutoImageProcessor`,
`AutoProcessor`, the package's own `AutoModelForTextToImage` and `pipeline("text-to-image", model=path)` know every
model of the package.
"""

from __future__ import annotations

from collections import OrderedDict

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.pipelines import PIPELINE_REGISTRY

from .image_processing import T2IImageProcessor
from .models.dalle import DalleConfig, DalleForConditionalGeneration, DalleModel
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
from .models.muse import MuseConfig, MuseForConditionalGeneration, MuseModel, MuseProcessor
from .models.parti import PartiConfig, PartiForConditionalGeneration, PartiModel, PartiProcessor
from .models.transfusion import (
    TransfusionConfig,
    TransfusionForConditionalGeneration,
    TransfusionModel,
    TransfusionProcessor,
)
from .models.vit_vqgan import ViTVQGAN, ViTVQGANConfig, ViTVQGANUpsampler, ViTVQGANUpsamplerConfig
from .pipelines.dalle.pipeline_dalle import DallePipeline
from .pipelines.fluid.pipeline_fluid import FluidPipeline
from .pipelines.muse.pipeline_muse import MusePipeline
from .pipelines.parti.pipeline_parti import PartiPipeline
from .pipelines.text_to_image import TEXT_TO_IMAGE_PIPELINES, TextToImagePipeline
from .pipelines.transfusion.pipeline_transfusion import TransfusionPipeline


class AutoModelForTextToImage(_BaseAutoModelClass):
    """Auto class for the text-to-image priors of hf_t2i: `AutoModelForTextToImage.from_pretrained(path)` returns a
    `DalleForConditionalGeneration`, `PartiForConditionalGeneration`, ... depending on `config.json`."""

    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


# (config class, base model, text-to-image model, processor, diffusers pipeline)
_TEXT_TO_IMAGE_MODELS = [
    (DalleConfig, DalleModel, DalleForConditionalGeneration, DalleProcessor, DallePipeline),
    (PartiConfig, PartiModel, PartiForConditionalGeneration, PartiProcessor, PartiPipeline),
    (
        TransfusionConfig,
        TransfusionModel,
        TransfusionForConditionalGeneration,
        TransfusionProcessor,
        TransfusionPipeline,
    ),
    (FluidConfig, FluidModel, FluidForConditionalGeneration, FluidProcessor, FluidPipeline),
    (MuseConfig, MuseModel, MuseForConditionalGeneration, MuseProcessor, MusePipeline),
]
# (config class, model) of the image tokenizers
_IMAGE_TOKENIZERS = [
    (DalleDVAEConfig, DalleDVAE),
    (DallePytorchDVAEConfig, DallePytorchDVAE),
    (ViTVQGANConfig, ViTVQGAN),
    (ViTVQGANUpsamplerConfig, ViTVQGANUpsampler),
]

_registered = False


def register_all() -> None:
    """Register every config, model, processor and pipeline (idempotent)."""
    global _registered
    if _registered:
        return
    for config_class, model_class in _IMAGE_TOKENIZERS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    for config_class, base_class, model_class, processor_class, pipeline_class in _TEXT_TO_IMAGE_MODELS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, base_class, exist_ok=True)
        AutoModelForTextToImage.register(config_class, model_class, exist_ok=True)
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": T2IImageProcessor}, exist_ok=True)
        AutoProcessor.register(config_class, processor_class, exist_ok=True)
        TEXT_TO_IMAGE_PIPELINES[config_class.model_type] = pipeline_class
    # class-conditional MAR: class labels instead of captions, hence no processor and no text-to-image task entry
    AutoConfig.register(MarConfig.model_type, MarConfig, exist_ok=True)
    AutoModel.register(MarConfig, FluidMAEModel, exist_ok=True)
    AutoModelForTextToImage.register(MarConfig, MarForConditionalGeneration, exist_ok=True)
    # Transfusion also writes text about images: transformers' "image-text-to-text" task (captioning)
    AutoModelForImageTextToText.register(TransfusionConfig, TransfusionForConditionalGeneration, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline(
        "text-to-image", pipeline_class=TextToImagePipeline, pt_model=AutoModelForTextToImage, type="multimodal"
    )
    _registered = True


__all__ = ["AutoModelForTextToImage", "register_all"]
