"""Pure-math algorithm pieces: reward shaping, advantage estimators (``advantages``) and losses."""
