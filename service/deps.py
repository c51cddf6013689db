"""FastAPI dependencies as Annotated aliases: the runtime and API-key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.budgets.tenancy import caller_tenant, role_of_token
from service.runtime_state import Runtime

_bearer = HTTPBearer(auto_error=False)


# The dependencies are async although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, a hop that costs more than the check itself.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _matches(token: str, keys: list[str]) -> bool:
    # constant-time comparison, and every key is compared, so timing says nothing
    found = False
    for k in keys:
        found |= hmac.compare_digest(token.encode(), k.encode())
    return found


def _role(runtime: Runtime, creds: HTTPAuthorizationCredentials | None) -> str | None:
    """"admin", "client", or "tenant:<name>" for a tenant's own key (a tenant's key
    names its tenant even where no other keys are configured)."""
    s = runtime.settings
    if creds is not None and creds.scheme.lower() == "bearer" and runtime.tenant_keys:
        role = role_of_token(runtime.tenant_keys, creds.credentials)
        if role is not None:
            return role
    if not s.auth_enabled:
        return "admin"
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if s.admin_key is not None and _matches(creds.credentials, [s.admin_key.get_secret_value()]):
        return "admin"
    if _matches(creds.credentials, [k.get_secret_value() for k in s.client_keys]):
        return "client"
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
    )


async def require_client(runtime: RuntimeDep, creds: Credentials) -> str | None:
    return _role(runtime, creds)


async def require_admin(runtime: RuntimeDep, creds: Credentials) -> str | None:
    role = _role(runtime, creds)
    if role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this endpoint needs the admin key")
    return role


async def require_metrics(runtime: RuntimeDep, creds: Credentials) -> str | None:
    """/metrics: any key but a tenant's (the metrics show every tenant's spend), unless
    `public_metrics` opens it."""
    if runtime.settings.public_metrics:
        return None
    role = _role(runtime, creds)
    if caller_tenant(role) is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "/metrics: not open to a tenant's key")
    return role


async def require_docs(runtime: RuntimeDep, creds: Credentials) -> str | None:
    """/openapi.json and /docs: any key, unless `public_docs` opens them."""
    return None if runtime.settings.public_docs else _role(runtime, creds)


ClientAuth = Annotated[str | None, Depends(require_client)]
AdminAuth = Annotated[str | None, Depends(require_admin)]
MetricsAuth = Annotated[str | None, Depends(require_metrics)]
DocsAuth = Annotated[str | None, Depends(require_docs)]
