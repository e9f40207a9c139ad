"""Integrations with other trainers. Each submodule imports its framework when it is imported (never here), so
``import regimen`` stays light:

- :mod:`regimen.integrations.lightning`: ``RegimenCallback``, regimen Methods inside a ``lightning.pytorch.Trainer``
  (``pip install 'regimen[lightning]'``).
"""

__all__: list[str] = []
