"""The one typed schema: every config field of a run and a sweep, with every default, in one place.

A *run* config (what `raysl train` takes, and a sweep's `base`) says what to pretrain and how; a *sweep*
config adds a search space of dotted keys into the run config, a scheduler and trial resources.
Files are YAML read with `yaml.safe_load` only. Everything is validated before Ray starts: a problem
raises `UserError` naming the file and the field.

The bottom of the house with `raysl.errors`: config modules import nothing of raysl but each other and
`raysl.errors`. Sections: base (Schema), data, model (backbone + method), training (optimizer, schedule,
views, evaluation, probe, resources), run (RunConfig), sweep (SweepConfig, search-space checks), overrides
(`--set`, dotted keys, messages naming a field), loading (YAML, legacy keys), smoke (--smoke: sizes, and resources fitted to the machine), reference (the
generated docs/configuration-reference.md). `from raysl.config import RunConfig` works for every public name.
"""

from raysl.config.base import KINDS, DatasetKind, Fraction, Positive, Schema
from raysl.config.data import CorruptionConfig, DataConfig, PoolDataset, SubsetConfig
from raysl.config.loading import (
    config_data,
    detect_file_kind,
    dump_yaml,
    legacy_stem,
    load_run_config,
    load_sweep_config,
    read_yaml,
    validated_run,
)
from raysl.config.model import (
    METHOD_CONFIGS,
    BYOLConfig,
    LoGoMoCoConfig,
    LoGoSimSiamConfig,
    MethodConfig,
    MoCoConfig,
    ModelConfig,
    Momentum,
    SimCLRConfig,
    SimSiamConfig,
    Temperature,
    WMSEConfig,
)
from raysl.config.overrides import field_paths, lookup, parse_overrides, set_dotted, validation_message
from raysl.config.run import RunConfig
from raysl.config.smoke import SMOKE_RUN, Machine, fit_to_machine
from raysl.config.sweep import (
    DRIVER_CPUS,
    EPOCH_METRICS,
    FINAL_METRIC,
    MAX_COMBINATIONS,
    NOT_SEARCHABLE,
    PBT_MUTABLE,
    ASHAConfig,
    FIFOConfig,
    PBTConfig,
    SchedulerConfig,
    SearchDistribution,
    SweepConfig,
    apply_assignment,
    check_search_space,
    rung_notes,
)
from raysl.config.training import (
    BlurConfig,
    Budget,
    ColorJitterConfig,
    CropSpec,
    EvaluationConfig,
    NodeLabels,
    OptimizerConfig,
    ProbeConfig,
    ResourcesConfig,
    ScheduleConfig,
    ViewsConfig,
)

__all__ = ['ASHAConfig', 'BYOLConfig', 'BlurConfig', 'Budget', 'ColorJitterConfig', 'CorruptionConfig', 'CropSpec', 'DRIVER_CPUS', 'DataConfig', 'DatasetKind', 'EPOCH_METRICS', 'EvaluationConfig', 'FIFOConfig', 'FINAL_METRIC', 'Fraction', 'KINDS', 'LoGoMoCoConfig', 'Machine', 'LoGoSimSiamConfig', 'MAX_COMBINATIONS', 'METHOD_CONFIGS', 'MethodConfig', 'MoCoConfig', 'ModelConfig', 'Momentum', 'NOT_SEARCHABLE', 'NodeLabels', 'OptimizerConfig', 'PBTConfig', 'PBT_MUTABLE', 'PoolDataset', 'Positive', 'ProbeConfig', 'ResourcesConfig', 'RunConfig', 'SMOKE_RUN', 'ScheduleConfig', 'SchedulerConfig', 'Schema', 'SearchDistribution', 'SimCLRConfig', 'SimSiamConfig', 'SubsetConfig', 'SweepConfig', 'Temperature', 'ViewsConfig', 'WMSEConfig', 'apply_assignment', 'check_search_space', 'config_data', 'detect_file_kind', 'dump_yaml', 'field_paths', 'fit_to_machine', 'legacy_stem', 'load_run_config', 'load_sweep_config', 'lookup', 'parse_overrides', 'read_yaml', 'validated_run', 'rung_notes', 'set_dotted', 'validation_message']
