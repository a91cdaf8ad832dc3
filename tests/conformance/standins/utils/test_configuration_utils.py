"""Stand-in for `config_common_kwargs` (tests/utils/test_configuration_utils.py), which `ConfigTester` uses to check
that every common `PreTrainedConfig` attribute can be set from keyword arguments: a set of non-default values for
the attributes every config carries in transformers 5."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": True,
    "is_encoder_decoder": True,
    "add_cross_attention": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "pad_token_id": 3,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
