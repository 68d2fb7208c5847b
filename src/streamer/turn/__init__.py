"""Turn-taking: the end-of-turn model, the engine that shares it, and the turn stage."""
