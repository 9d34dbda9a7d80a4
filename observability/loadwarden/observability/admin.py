"""The admin HTTP port, for the service to mount: metrics, load status, the dashboard and
its history. Public names only; imported lazily by the service when `admin.listen` is set."""

from ._admin_http import AdminHttp, build_admin_app, start_admin_http
from ._dashboard import add_dashboard_routes
from ._history import History

__all__ = ["AdminHttp", "History", "add_dashboard_routes", "build_admin_app", "start_admin_http"]
