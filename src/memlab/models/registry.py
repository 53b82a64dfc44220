"""Model registry: name -> (config class, model class). Every entry follows the (segment, state) contract."""
from __future__ import annotations

import dataclasses

from .armt import ARMT, ARMTConfig
from .fam import FAM, FAMConfig
from .rmt import RMT, RMTConfig
from .sleep import SleepConfig, SleepHybrid
from .titans import Titans, TitansConfig
from .transformer import Transformer, TransformerConfig

MODELS = {
    "transformer": (TransformerConfig, Transformer),
    "rmt": (RMTConfig, RMT),
    "armt": (ARMTConfig, ARMT),
    "sleep": (SleepConfig, SleepHybrid),
    "titans": (TitansConfig, Titans),
    "fam": (FAMConfig, FAM),
}


def _hf_entry():
    from .hf import HFRMT, HFRMTConfig

    return HFRMTConfig, HFRMT


LAZY_MODELS = {"hf-rmt": _hf_entry}  # need transformers; imported on use


def known_models() -> list[str]:
    return sorted([*MODELS, *LAZY_MODELS])


def model_classes(name: str):
    if name in MODELS:
        return MODELS[name]
    if name in LAZY_MODELS:
        return LAZY_MODELS[name]()
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(known_models())}")


def config_from_dict(d: dict):
    """Rebuild a config from its JSON (config.json beside a checkpoint); unknown keys are an error."""
    if "kind" not in d:
        raise ValueError("config has no 'kind' field; expected one of: " + ", ".join(known_models()))
    cfg_cls, _ = model_classes(d["kind"])
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"config for {d['kind']!r} has unknown fields {unknown}; known fields: {sorted(names)}")
    return cfg_cls(**d)


def build_model(config):
    _, model_cls = model_classes(config.kind)
    return model_cls(config)


def make_config(name: str, **overrides):
    """A config for model `name` with overrides; `transformer` accepts window=W for sliding-window attention."""
    cfg_cls, _ = model_classes(name)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"model {name!r} has no option(s) {bad}; options: {sorted(names - {'kind'})}")
    for f in dataclasses.fields(cfg_cls):  # text where a number or a flag belongs (YAML reads 1.0e9 as a string)
        value, default = overrides.get(f.name), f.default
        if isinstance(value, str) and isinstance(default, (bool, int, float)):
            want, fix = (("true or false", "write true or false, unquoted") if isinstance(default, bool) else
                         ("a number", "in YAML write a number with a sign in its exponent (1.0e+9) or in full (1000000000.0)"))
            raise ValueError(f"model option {f.name} must be {want}, got the text {value!r}; {fix}")
    return cfg_cls(**overrides)
