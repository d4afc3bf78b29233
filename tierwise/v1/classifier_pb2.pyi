from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("text", "head", "tradeoff", "quality_target")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TRADEOFF_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    text: str
    head: str
    tradeoff: float
    quality_target: float
    def __init__(self, text: _Optional[str] = ..., head: _Optional[str] = ..., tradeoff: _Optional[float] = ..., quality_target: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("tier", "probabilities", "head", "head_version", "encoder_version", "confidence", "cache_hit", "input_tokens", "truncated", "tradeoff", "relative_cost", "support_margin", "outside_support", "quality_target")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    HEAD_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TRADEOFF_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_COST_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_MARGIN_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_SUPPORT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    tier: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    head: str
    head_version: str
    encoder_version: str
    confidence: float
    cache_hit: bool
    input_tokens: int
    truncated: bool
    tradeoff: float
    relative_cost: _containers.RepeatedScalarFieldContainer[float]
    support_margin: float
    outside_support: bool
    quality_target: float
    def __init__(self, tier: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., head: _Optional[str] = ..., head_version: _Optional[str] = ..., encoder_version: _Optional[str] = ..., confidence: _Optional[float] = ..., cache_hit: _Optional[bool] = ..., input_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ..., tradeoff: _Optional[float] = ..., relative_cost: _Optional[_Iterable[float]] = ..., support_margin: _Optional[float] = ..., outside_support: _Optional[bool] = ..., quality_target: _Optional[float] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("texts", "head", "tradeoff", "quality_target")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TRADEOFF_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    head: str
    tradeoff: float
    quality_target: float
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., head: _Optional[str] = ..., tradeoff: _Optional[float] = ..., quality_target: _Optional[float] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClassifyResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ClassifyResponse, _Mapping]]] = ...) -> None: ...

class ListHeadsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeadInfo(_message.Message):
    __slots__ = ("name", "version", "is_default", "tiers", "target_quality", "card", "tradeoff", "relative_cost", "models", "calibration", "support_centroids")
    class CardEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CalibrationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TARGET_QUALITY_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    TRADEOFF_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_COST_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    is_default: bool
    tiers: _containers.RepeatedScalarFieldContainer[int]
    target_quality: float
    card: _containers.ScalarMap[str, str]
    tradeoff: float
    relative_cost: _containers.RepeatedScalarFieldContainer[float]
    models: _containers.RepeatedScalarFieldContainer[str]
    calibration: _containers.ScalarMap[str, float]
    support_centroids: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., is_default: _Optional[bool] = ..., tiers: _Optional[_Iterable[int]] = ..., target_quality: _Optional[float] = ..., card: _Optional[_Mapping[str, str]] = ..., tradeoff: _Optional[float] = ..., relative_cost: _Optional[_Iterable[float]] = ..., models: _Optional[_Iterable[str]] = ..., calibration: _Optional[_Mapping[str, float]] = ..., support_centroids: _Optional[int] = ...) -> None: ...

class EncoderInfo(_message.Message):
    __slots__ = ("name", "version", "dimension", "max_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    dimension: int
    max_tokens: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., dimension: _Optional[int] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ListHeadsResponse(_message.Message):
    __slots__ = ("heads", "encoder", "default_head", "max_batch", "max_text_bytes")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEAD_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedCompositeFieldContainer[HeadInfo]
    encoder: EncoderInfo
    default_head: str
    max_batch: int
    max_text_bytes: int
    def __init__(self, heads: _Optional[_Iterable[_Union[HeadInfo, _Mapping]]] = ..., encoder: _Optional[_Union[EncoderInfo, _Mapping]] = ..., default_head: _Optional[str] = ..., max_batch: _Optional[int] = ..., max_text_bytes: _Optional[int] = ...) -> None: ...
