"""Provisioning: claim tokens → per-agent broker credentials with topic ACLs, revocation,
bulk CSV, and the audit log of every mutation.

Modules: ``tokens`` (token secrets, their checks, the failure limiter, the error tree),
``models`` (tables), ``broker`` (BrokerAdmin: Mosquitto dynamic security, none), ``service``
(ProvisioningService). The HTTP routes are in ``cloud_hub.api.routes_provisioning``.
"""

from cloud_hub.provisioning.broker import (
    BrokerAdmin,
    BrokerAdminError,
    BrokerAdminSettings,
    DynsecAdminSettings,
    MosquittoDynsec,
    NoBrokerAdminSettings,
    NullBrokerAdmin,
    open_broker_admin,
)
from cloud_hub.provisioning.models import AgentCredentialRow, AuditRow, ProvisioningTokenRow
from cloud_hub.provisioning.service import (
    CSV_COLUMNS,
    ClaimResult,
    DeviceSpec,
    IssuedToken,
    ProvisioningService,
    ProvisioningSettings,
    PublicMqtt,
)
from cloud_hub.provisioning.tokens import (
    FailureLimiter,
    InvalidRequest,
    NotFound,
    ProvisioningConflict,
    ProvisioningError,
    RateLimited,
    ScopeViolation,
    TokenRefused,
)

__all__ = [
    "CSV_COLUMNS",
    "AgentCredentialRow",
    "AuditRow",
    "BrokerAdmin",
    "BrokerAdminError",
    "BrokerAdminSettings",
    "ClaimResult",
    "DeviceSpec",
    "DynsecAdminSettings",
    "FailureLimiter",
    "InvalidRequest",
    "IssuedToken",
    "MosquittoDynsec",
    "NoBrokerAdminSettings",
    "NotFound",
    "NullBrokerAdmin",
    "ProvisioningConflict",
    "ProvisioningError",
    "ProvisioningService",
    "ProvisioningSettings",
    "ProvisioningTokenRow",
    "PublicMqtt",
    "RateLimited",
    "ScopeViolation",
    "TokenRefused",
    "open_broker_admin",
]
