"""Experiment suites: grids of ``steerlab run`` units over models, tasks, methods and seeds, run serially or on Ray,
resumable unit by unit, aggregated from the units' reports (``spec``, ``unit``, ``worker``, ``ray_pool``, ``run``,
``aggregate``, ``report``, ``figure``)."""
