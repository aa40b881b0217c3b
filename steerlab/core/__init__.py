"""The vector and its steerlab file, the steering hooks and the positions they act on."""
