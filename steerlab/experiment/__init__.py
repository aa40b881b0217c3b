"""The ``steerlab run`` job: configuration, runner, statistics and controls, resumable store, report."""
