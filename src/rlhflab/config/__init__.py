"""Configuration: one dataclass per concern (:mod:`.schema`), YAML presets, ``--set`` overrides and type checks
(:mod:`.files`), cross-field validation (:mod:`.checks`).

Every field has a one-line docstring, which ``rlhflab train --help-config`` prints. Unknown keys, malformed values and
failed cross-field checks raise :class:`UserError` with one line that names the key and what would be valid.
"""

from rlhflab.config.checks import validate
from rlhflab.config.files import (
    apply_override,
    build_config,
    describe_fields,
    field_docs,
    from_dict,
    load_config,
    load_file_dict,
    load_preset_dict,
    preset_names,
    save_config,
    to_dict,
)
from rlhflab.config.schema import (
    AlgorithmConfig,
    CheckpointConfig,
    Config,
    CriticConfig,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    FastPathsConfig,
    LoraSettings,
    ModelConfig,
    PreferenceConfig,
    RewardComponent,
    RewardConfig,
    RolloutConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "AlgorithmConfig",
    "CheckpointConfig",
    "Config",
    "CriticConfig",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "FastPathsConfig",
    "LoraSettings",
    "ModelConfig",
    "PreferenceConfig",
    "RewardComponent",
    "RewardConfig",
    "RolloutConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_override",
    "build_config",
    "describe_fields",
    "field_docs",
    "from_dict",
    "load_config",
    "load_file_dict",
    "load_preset_dict",
    "preset_names",
    "save_config",
    "to_dict",
    "validate",
]
