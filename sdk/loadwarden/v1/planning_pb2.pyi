import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForecastSeries(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORECAST_SERIES_UNSPECIFIED: _ClassVar[ForecastSeries]
    FORECAST_SERIES_REQUESTS_PER_S: _ClassVar[ForecastSeries]
    FORECAST_SERIES_IN_FLIGHT: _ClassVar[ForecastSeries]
    FORECAST_SERIES_CPU: _ClassVar[ForecastSeries]
    FORECAST_SERIES_LATENCY_MS: _ClassVar[ForecastSeries]
    FORECAST_SERIES_BATCH_REQUESTS_PER_S: _ClassVar[ForecastSeries]
    FORECAST_SERIES_LOAD_SCORE: _ClassVar[ForecastSeries]

class ScalingMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALING_METRIC_UNSPECIFIED: _ClassVar[ScalingMetric]
    SCALING_METRIC_CPU: _ClassVar[ScalingMetric]
    SCALING_METRIC_IN_FLIGHT: _ClassVar[ScalingMetric]
    SCALING_METRIC_REQUESTS_PER_S: _ClassVar[ScalingMetric]
FORECAST_SERIES_UNSPECIFIED: ForecastSeries
FORECAST_SERIES_REQUESTS_PER_S: ForecastSeries
FORECAST_SERIES_IN_FLIGHT: ForecastSeries
FORECAST_SERIES_CPU: ForecastSeries
FORECAST_SERIES_LATENCY_MS: ForecastSeries
FORECAST_SERIES_BATCH_REQUESTS_PER_S: ForecastSeries
FORECAST_SERIES_LOAD_SCORE: ForecastSeries
SCALING_METRIC_UNSPECIFIED: ScalingMetric
SCALING_METRIC_CPU: ScalingMetric
SCALING_METRIC_IN_FLIGHT: ScalingMetric
SCALING_METRIC_REQUESTS_PER_S: ScalingMetric

class ForecastPoint(_message.Message):
    __slots__ = ("at", "value", "lower", "upper")
    AT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    value: float
    lower: float
    upper: float
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class ModelScore(_message.Message):
    __slots__ = ("model", "mape", "coverage", "origins")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAPE_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    model: str
    mape: float
    coverage: float
    origins: int
    def __init__(self, model: _Optional[str] = ..., mape: _Optional[float] = ..., coverage: _Optional[float] = ..., origins: _Optional[int] = ...) -> None: ...

class Forecast(_message.Message):
    __slots__ = ("series", "model", "reason", "history_points", "coverage", "points", "scores")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_POINTS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    series: ForecastSeries
    model: str
    reason: str
    history_points: int
    coverage: float
    points: _containers.RepeatedCompositeFieldContainer[ForecastPoint]
    scores: _containers.RepeatedCompositeFieldContainer[ModelScore]
    def __init__(self, series: _Optional[_Union[ForecastSeries, str]] = ..., model: _Optional[str] = ..., reason: _Optional[str] = ..., history_points: _Optional[int] = ..., coverage: _Optional[float] = ..., points: _Optional[_Iterable[_Union[ForecastPoint, _Mapping]]] = ..., scores: _Optional[_Iterable[_Union[ModelScore, _Mapping]]] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("pool", "desired_servers", "reactive_servers", "predictive_servers", "current_servers", "metric", "metric_value", "target", "forecast_peak", "lead_time_s", "reason", "predictive", "forecasts", "computed_at")
    POOL_FIELD_NUMBER: _ClassVar[int]
    DESIRED_SERVERS_FIELD_NUMBER: _ClassVar[int]
    REACTIVE_SERVERS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIVE_SERVERS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SERVERS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    METRIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FORECAST_PEAK_FIELD_NUMBER: _ClassVar[int]
    LEAD_TIME_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREDICTIVE_FIELD_NUMBER: _ClassVar[int]
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    pool: str
    desired_servers: int
    reactive_servers: int
    predictive_servers: int
    current_servers: int
    metric: ScalingMetric
    metric_value: float
    target: float
    forecast_peak: float
    lead_time_s: float
    reason: str
    predictive: bool
    forecasts: _containers.RepeatedCompositeFieldContainer[Forecast]
    computed_at: _timestamp_pb2.Timestamp
    def __init__(self, pool: _Optional[str] = ..., desired_servers: _Optional[int] = ..., reactive_servers: _Optional[int] = ..., predictive_servers: _Optional[int] = ..., current_servers: _Optional[int] = ..., metric: _Optional[_Union[ScalingMetric, str]] = ..., metric_value: _Optional[float] = ..., target: _Optional[float] = ..., forecast_peak: _Optional[float] = ..., lead_time_s: _Optional[float] = ..., reason: _Optional[str] = ..., predictive: _Optional[bool] = ..., forecasts: _Optional[_Iterable[_Union[Forecast, _Mapping]]] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OperationForecasts(_message.Message):
    __slots__ = ("operation", "forecasts", "computed_at")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    operation: str
    forecasts: _containers.RepeatedCompositeFieldContainer[Forecast]
    computed_at: _timestamp_pb2.Timestamp
    def __init__(self, operation: _Optional[str] = ..., forecasts: _Optional[_Iterable[_Union[Forecast, _Mapping]]] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
