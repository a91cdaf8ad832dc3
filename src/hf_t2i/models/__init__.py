"""One folder per artifact with weights: configuration, modeling and processing of each model.

No model family imports another: the image tokenizers that the priors nest (`DalleDVAE`, `ViTVQGAN`, diffusers'
`VQModel` and `AutoencoderKL`) are reached through `image_tokenizers.py`, and shared building blocks live in
`hf_t2i.layers`."""
