"""VM templates: a guest booted once and saved, from which containers' VMs start.

- :mod:`runv.templates.store`: the template directory, records, names, removal, and the
  note a container's state keeps of the template it used.
- :mod:`runv.templates.match`: which template may serve a VM (pure functions: shape,
  staleness, damage).
- :mod:`runv.templates.make`: booting and saving one (``runv template create``).
- :mod:`runv.templates.restore`: starting a container's VM from one.
"""
