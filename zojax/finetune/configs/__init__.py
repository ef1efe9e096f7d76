"""Bundled run configs, addressable by name: ``zojax-train --config=<name>[:<argument>]``.

Each module's ``get_config(argument)`` returns a ``zojax.finetune.default_config()`` with
its setting: ``default`` (the embedded default), ``smollm2`` (method,task), ``paper``
(model,method,task on OPT), ``reproduce`` (task,method of the reproduction table) and
``reproduce_v2`` (method of the second reproduction, SST-2).
"""
