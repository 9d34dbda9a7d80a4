from loadwarden.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DrainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAIN_STATE_UNSPECIFIED: _ClassVar[DrainState]
    DRAIN_STATE_DRAINING: _ClassVar[DrainState]
    DRAIN_STATE_SERVING: _ClassVar[DrainState]
DRAIN_STATE_UNSPECIFIED: DrainState
DRAIN_STATE_DRAINING: DrainState
DRAIN_STATE_SERVING: DrainState

class ConfigurePoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: _common_pb2.PoolConfig
    def __init__(self, pool: _Optional[_Union[_common_pb2.PoolConfig, _Mapping]] = ...) -> None: ...

class ConfigurePoolResponse(_message.Message):
    __slots__ = ("pool", "created")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    pool: _common_pb2.PoolStatus
    created: bool
    def __init__(self, pool: _Optional[_Union[_common_pb2.PoolStatus, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeletePoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class DeletePoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterServerRequest(_message.Message):
    __slots__ = ("pool", "server")
    POOL_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    pool: str
    server: _common_pb2.ServerSpec
    def __init__(self, pool: _Optional[str] = ..., server: _Optional[_Union[_common_pb2.ServerSpec, _Mapping]] = ...) -> None: ...

class RegisterServerResponse(_message.Message):
    __slots__ = ("server", "created")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    server: _common_pb2.ServerStatus
    created: bool
    def __init__(self, server: _Optional[_Union[_common_pb2.ServerStatus, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeregisterServerRequest(_message.Message):
    __slots__ = ("pool", "server_id")
    POOL_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    pool: str
    server_id: str
    def __init__(self, pool: _Optional[str] = ..., server_id: _Optional[str] = ...) -> None: ...

class DeregisterServerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainServerRequest(_message.Message):
    __slots__ = ("pool", "server_id", "state")
    POOL_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    server_id: str
    state: DrainState
    def __init__(self, pool: _Optional[str] = ..., server_id: _Optional[str] = ..., state: _Optional[_Union[DrainState, str]] = ...) -> None: ...

class DrainServerResponse(_message.Message):
    __slots__ = ("server",)
    SERVER_FIELD_NUMBER: _ClassVar[int]
    server: _common_pb2.ServerStatus
    def __init__(self, server: _Optional[_Union[_common_pb2.ServerStatus, _Mapping]] = ...) -> None: ...

class ConfigureOperationRequest(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.OperationConfig
    def __init__(self, operation: _Optional[_Union[_common_pb2.OperationConfig, _Mapping]] = ...) -> None: ...

class ConfigureOperationResponse(_message.Message):
    __slots__ = ("operation", "created")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.OperationStatus
    created: bool
    def __init__(self, operation: _Optional[_Union[_common_pb2.OperationStatus, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeleteOperationRequest(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: str
    def __init__(self, operation: _Optional[str] = ...) -> None: ...

class DeleteOperationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
