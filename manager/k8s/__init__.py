"""Kubernetes manifests (deploy/) rendered and checked offline: no cluster, no network.

``render.build(folder)`` runs ``kustomize build``; ``checks.check(manifests)`` returns what is
wrong with them, each finding saying where, what and how to fix it. Pure code: no store, no
services, no HTTP (an import-linter contract keeps it so).
"""

from manager.k8s.checks import check
from manager.k8s.objects import ExternalSecret, Finding
from manager.k8s.render import build, find_kustomize, read_external_secrets

__all__ = ["ExternalSecret", "Finding", "build", "check", "find_kustomize", "read_external_secrets"]
