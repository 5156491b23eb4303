"""Secrets: `read|write|list|delete|rotate:secrets/<env>/<path>` through the gate.

Backends: `embedded` (AES-256-GCM in the state database, the default) and `vault`
(KV v2 on OpenBao or HashiCorp Vault). A value is a `SecretValue`, which never shows
itself in a repr, a log line, an error or JSON; the SDK functions in
`opsgate.secrets.sdk` run every operation through `Gate.execute`.
"""

from opsgate.errors import SecretBackendError, SecretError
from opsgate.secrets.base import SecretStore, SecretVersion
from opsgate.secrets.service import SecretsService
from opsgate.secrets.value import MASK, SecretValue

__all__ = [
    "MASK",
    "SecretBackendError",
    "SecretError",
    "SecretStore",
    "SecretValue",
    "SecretVersion",
    "SecretsService",
]
