"""The station database and image store.

Open with ``open_database(url=None, data_dir="data")`` (SQLite at ``<data_dir>/station.db`` by default,
any SQLAlchemy URL otherwise) and use the returned StationDB; it hands out plain frozen views, never
ORM objects. Roles and permissions: ``core.storage.roles``.
"""
from core.storage.db import IntegrityReport, StationDB, open_database
from core.storage.errors import DatabaseBusyError, NotFoundError, StorageError
from core.storage.export import export_tagged
from core.storage.imagestore import ImageStore, StoredFile
from core.storage.roles import ACTIONS, ROLE_PERMISSIONS, ROLES, PermissionDenied, allowed, require
from core.storage.views import (LABELS, RUN_STATUSES, VERDICTS, AuditEntry, InspectionRecord, InspectionView,
                                LabelView, ModelVersionView, TrainingRunView, User)

__all__ = [
    "ACTIONS", "LABELS", "ROLES", "ROLE_PERMISSIONS", "RUN_STATUSES", "VERDICTS",
    "AuditEntry", "DatabaseBusyError", "ImageStore", "InspectionRecord", "InspectionView", "IntegrityReport",
    "LabelView", "ModelVersionView", "NotFoundError", "PermissionDenied", "StationDB", "StorageError",
    "StoredFile", "TrainingRunView", "User", "allowed", "export_tagged", "open_database", "require",
]
