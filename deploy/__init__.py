"""Deploying to AWS: the Lambda package, the templates and the functions' policies, built by `ledger package`."""

from .package import Built, PackageError, package
from .policy import policy_documents
from .template import service_merge_template, tables_template

__all__ = ["Built", "PackageError", "package", "policy_documents", "service_merge_template", "tables_template"]
