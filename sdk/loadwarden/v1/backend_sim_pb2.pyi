from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HandleRequest(_message.Message):
    __slots__ = ("request_id", "items")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: int
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[int] = ...) -> None: ...

class HandleResponse(_message.Message):
    __slots__ = ("server_id", "request_id", "queue_ms", "service_ms", "items")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_MS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    request_id: str
    queue_ms: float
    service_ms: float
    items: int
    def __init__(self, server_id: _Optional[str] = ..., request_id: _Optional[str] = ..., queue_ms: _Optional[float] = ..., service_ms: _Optional[float] = ..., items: _Optional[int] = ...) -> None: ...
