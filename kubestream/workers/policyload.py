"""The pod policy's files: the overlay a launcher reads once at start, the template directory check.

The decisions are in ``podpolicy`` (pure); this module only reads files and
resolves paths. It imports neither airflow nor kubernetes, so the executor can
use :func:`template_file_allowed` too.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubestream.settings import Settings
from kubestream.workers.podpolicy import OverlayError, PodPolicy, parse_overlay, template_path_allowed

__all__ = ["load_pod_policy", "template_file_allowed"]


def load_pod_policy(settings: Settings) -> PodPolicy:
    """The launcher's policy, with ``pod_policy_overlay_file`` read and checked now (once).

    :class:`~kubestream.workers.podpolicy.OverlayError` names the file when it cannot be read or
    is not a valid overlay, so a wrong file stops the launcher at start.
    """
    overlay = None
    path = settings.pod_policy_overlay_file
    if path:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise OverlayError(f"cannot read pod_policy_overlay_file {path!r}: {exc}") from None
        try:
            overlay = parse_overlay(text)
        except OverlayError as exc:
            raise OverlayError(f"pod_policy_overlay_file {path!r}: {exc}") from None
    return PodPolicy.from_settings(settings, overlay)


def template_file_allowed(path: str, template_dir: str) -> bool:
    """Whether a task's ``pod_template_file`` lies inside ``template_dir`` once symlinks and ``..``
    are resolved (empty ``template_dir``: any path)."""
    return template_path_allowed(path, template_dir, realpath=os.path.realpath)
