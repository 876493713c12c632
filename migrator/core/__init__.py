"""What phases and the engine share: steps and events, the run context and options, errors, the Phase interface."""
